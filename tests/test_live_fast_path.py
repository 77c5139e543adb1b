"""The hand-built audio message must be what the SDK itself would send, byte for meaning."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import structlog.testing
from google.genai import Client, types
from google.genai.live import AsyncSession
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame, Opcode

from gateway.live import fast_path
from gateway.live.fast_path import (
    INPUT_MIME,
    model_audio,
    model_transcript,
    realtime_audio_message,
)
from gateway.live.session import _AudioTap, _Lane, _translate
from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    HandleUpdated,
    TurnComplete,
    UsageReported,
)


class _CapturingSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


API_CLIENT = Client(api_key="test-key")._api_client


async def _sdk_message(pcm: bytes) -> Any:
    socket = _CapturingSocket()
    session = AsyncSession(api_client=API_CLIENT, websocket=socket)  # type: ignore[arg-type]
    await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type=INPUT_MIME))
    (message,) = socket.sent
    return json.loads(message)


@given(st.binary(max_size=4000))
async def test_fast_path_message_equals_the_sdks(pcm: bytes) -> None:
    assert json.loads(realtime_audio_message(pcm)) == await _sdk_message(pcm)


async def test_the_sdk_session_still_exposes_the_socket_the_fast_path_uses() -> None:
    session = AsyncSession(api_client=API_CLIENT, websocket=_CapturingSocket())  # type: ignore[arg-type]
    assert callable(getattr(getattr(session, "_ws", None), "send", None))


class _ReplaySocket:
    """A websocket that hands the SDK one given frame."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def recv(self, decode: bool | None = None) -> bytes:
        return self.raw


async def _sdk_parse(raw: bytes) -> types.LiveServerMessage:
    session = AsyncSession(api_client=API_CLIENT, websocket=_ReplaySocket(raw))  # type: ignore[arg-type]
    async for message in session.receive():
        return message
    raise AssertionError("the SDK yielded nothing")


def _audio_message(chunks: list[bytes], **extra: Any) -> bytes:
    parts = [
        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(c).decode()}}
        for c in chunks
    ]
    return json.dumps({"serverContent": {"modelTurn": {"parts": parts}, **extra}}).encode()


def _sdk_audio(message: types.LiveServerMessage) -> bytes:
    content = message.server_content
    assert content is not None and content.model_turn is not None
    return b"".join(
        p.inline_data.data or b"" for p in content.model_turn.parts or [] if p.inline_data
    )


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=3))
async def test_gemini_audio_takes_the_fast_path_and_decodes_as_the_sdk_does(
    chunks: list[bytes],
) -> None:
    raw = _audio_message(chunks)
    pcm = model_audio(raw)
    assert pcm is not None, "a plain audio message must take the fast path"
    assert pcm == _sdk_audio(await _sdk_parse(raw)) == b"".join(chunks)
    assert model_audio(raw.decode()) == pcm  # text frames too


_EXTRAS: list[dict[str, Any]] = [
    {"turnComplete": True},
    {"interrupted": True},
    {"generationComplete": True},
    {"outputTranscription": {"text": "hello"}},
    {"inputTranscription": {"text": "hi"}},
]


@given(st.binary(min_size=1, max_size=500), st.sampled_from(_EXTRAS))
async def test_audio_with_anything_else_in_it_is_left_to_the_sdk(
    pcm: bytes, extra: dict[str, Any]
) -> None:
    raw = _audio_message([pcm], **extra)
    assert model_audio(raw) is None
    message = await _sdk_parse(raw)
    assert _sdk_audio(message) == pcm  # the SDK still has it all


def test_other_messages_and_malformed_frames_are_left_to_the_sdk() -> None:
    audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAAA"}}
    audio_16k = {"inlineData": {"mimeType": "audio/pcm;rate=16000", "data": "AAAA"}}
    garbled = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "not base64!"}}
    for message in [
        {"serverContent": {"modelTurn": {"parts": [audio]}}, "usageMetadata": {}},
        {"serverContent": {"modelTurn": {"parts": [audio, {"text": "x"}]}}},
        {"serverContent": {"modelTurn": {"parts": [audio_16k]}}},
        {"serverContent": {"modelTurn": {"parts": [garbled]}}},
        {"serverContent": {"modelTurn": {"parts": []}}},
        {"toolCall": {"functionCalls": [{"name": "inlineData"}]}},
        {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}},
        {"goAway": {"timeLeft": "5s"}},
    ]:  # fmt: skip
        assert model_audio(json.dumps(message).encode()) is None, message
    assert model_audio(b"{not json inlineData") is None
    assert model_audio(b"[1, 2, 3]") is None


async def test_the_sdk_session_still_reads_through_its_socket_recv() -> None:
    # The receive fast path replaces the session's _ws with a tap whose recv the SDK must call.
    raw = _audio_message([b"\x01\x02"])
    assert _sdk_audio(await _sdk_parse(raw)) == b"\x01\x02"


# ------------------------------------------------------------------ the run-time check


async def test_the_run_time_check_finds_the_installed_sdk_matching() -> None:
    assert await fast_path.sdk_mismatch(Client(api_key="test-key")) is None


async def test_the_run_time_check_reports_a_builder_that_no_longer_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def standard_base64(pcm: bytes) -> str:  # a builder drifted from the SDK's URL-safe base64
        audio = {"data": base64.b64encode(pcm).decode(), "mime_type": INPUT_MIME}
        return json.dumps({"realtime_input": {"audio": audio}})

    monkeypatch.setattr(fast_path, "realtime_audio_message", standard_base64)
    problem = await fast_path.sdk_mismatch(Client(api_key="test-key"))
    assert problem is not None and "differently" in problem


async def test_the_run_time_check_reports_an_sdk_without_the_socket_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = AsyncSession.__init__

    def init(self: AsyncSession, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._socket = self._ws  # type: ignore[attr-defined]
        del self._ws

    monkeypatch.setattr(AsyncSession, "__init__", init)
    problem = await fast_path.sdk_mismatch(Client(api_key="test-key"))
    assert problem is not None and "_ws" in problem


# ------------------------------------------------------------------ frames the SDK cannot parse


class _ScriptedSocket:
    """Plays frames to whoever reads, then closes normally."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = list(frames)

    async def recv(self, decode: bool | None = None) -> str:
        if not self.frames:
            raise ConnectionClosedOK(None, None)
        return self.frames.pop(0)


def test_frames_without_a_known_top_level_key_are_told_apart() -> None:
    assert not fast_path.understood('{"somethingNew": {"x": 1}}')
    assert not fast_path.understood('{"serverContent": null}')
    assert fast_path.understood('{"serverContent": {"turnComplete": true}}')
    assert fast_path.understood('{"somethingNew": {}, "goAway": {"timeLeft": "5s"}}')
    assert fast_path.understood('{"code": 1011, "message": "x"}')  # the SDK's error path
    assert fast_path.understood("not json")  # the SDK reports it as it always has
    assert fast_path.keys_of('{"somethingNew": {"secret": "x"}}') == ["somethingNew"]


@given(st.dictionaries(st.text(max_size=12), st.integers(), max_size=4))
def test_understood_never_raises(message: dict[str, int]) -> None:
    fast_path.understood(json.dumps(message))


async def test_the_sdk_reading_through_the_tap_skips_an_unknown_frame_once_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames = [
        '{"somethingNew": {"detail": "private"}}',
        '{"anotherNew": {}}',
        '{"goAway": {"timeLeft": "5s"}}',
        '{"serverContent": {"turnComplete": true, "waitingForInput": true}}',
    ]
    events: asyncio.Queue[Any] = asyncio.Queue()
    log = structlog.get_logger("test")
    tap = _AudioTap(_ScriptedSocket(frames), 1, events, log)
    session = AsyncSession(api_client=API_CLIENT, websocket=tap)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        messages = [m async for m in session.receive()]
    assert len(messages) == 2 and messages[0].go_away is not None
    assert messages[1].server_content.turn_complete  # type: ignore[union-attr]
    (warning,) = [e for e in logs if e["event"] == "live.unknown_message_skipped"]
    assert warning["head"] == ["somethingNew"] and "private" not in str(warning)


async def test_the_tap_also_serves_an_sdk_that_iterates_the_socket() -> None:
    frames = ['{"unknown": 1}', '{"goAway": {"timeLeft": "5s"}}']
    tap = _AudioTap(_ScriptedSocket(frames), 1, asyncio.Queue(), structlog.get_logger("t"))
    assert [frame async for frame in tap] == [frames[1]]


def _transcript_message(field: str, text: str, **extra: Any) -> bytes:
    return json.dumps({"serverContent": {field: {"text": text, **extra}}}).encode()


@given(st.sampled_from(["inputTranscription", "outputTranscription"]), st.text(min_size=1))
async def test_a_transcription_takes_the_fast_path_and_reads_as_through_the_sdk(
    field: str, text: str
) -> None:
    raw = _transcript_message(field, text)
    fast = model_transcript(raw)
    assert fast is not None, "a plain transcription must take the fast path"
    (event,) = _translate(await _sdk_parse(raw))
    speaker, fast_text = fast
    expected = CallerTranscript if speaker == "caller" else AgentTranscript
    assert event == expected(fast_text)
    assert model_transcript(raw.decode()) == fast


async def test_transcriptions_with_anything_else_are_left_to_the_sdk() -> None:
    for raw in [
        _transcript_message("outputTranscription", "hi", finished=True),
        _transcript_message("outputTranscription", ""),
        json.dumps({"serverContent": {"outputTranscription": {"text": "a"},
                                      "turnComplete": True}}).encode(),
        json.dumps({"serverContent": {"outputTranscription": {"text": "a"}},
                    "usageMetadata": {}}).encode(),
        json.dumps({"serverContent": {"outputTranscription": {"text": 5}}}).encode(),
        json.dumps({"serverContent": {"outputTranscription": "text"}}).encode(),
        json.dumps({"serverContent": {"otherTranscription": {"text": "a"}}}).encode(),
        b"{not json Transcription",
    ]:  # fmt: skip
        assert model_transcript(raw) is None, raw
    # and the SDK still reads what was left to it
    raw = _transcript_message("outputTranscription", "hi", finished=True)
    assert _translate(await _sdk_parse(raw)) == [AgentTranscript("hi")]


async def test_the_tap_queues_transcriptions_and_bookkeeping_in_order_with_the_audio() -> None:
    frames = [
        _audio_message([b"\x01\x02"]).decode(),
        _transcript_message("outputTranscription", "Hel").decode(),
        _transcript_message("inputTranscription", "yes").decode(),
        '{"serverContent": {"turnComplete": true}, "usageMetadata": {"promptTokenCount": 9}}',
        '{"sessionResumptionUpdate": {"newHandle": "h", "resumable": true}}',
        '{"goAway": {"timeLeft": "5s"}}',
    ]
    events: asyncio.Queue[Any] = asyncio.Queue()
    tap = _AudioTap(_ScriptedSocket(frames), 7, events, structlog.get_logger("t"))
    assert await tap.recv() == frames[5]  # the first the SDK must read
    queued = [events.get_nowait() for _ in range(events.qsize())]
    assert queued == [
        (7, AudioOut(b"\x01\x02")),
        (7, AgentTranscript("Hel")),
        (7, CallerTranscript("yes")),
        (7, TurnComplete()),
        (7, UsageReported(9, 0, 9)),
        (7, HandleUpdated("h")),
    ]


# ------------------------------------------------------------------ a turn's bookkeeping

_BOOKKEEPING: list[dict[str, Any]] = [
    {"serverContent": {"turnComplete": True}},
    {"serverContent": {"generationComplete": True}},
    {"serverContent": {"interrupted": True}},
    {"serverContent": {"interrupted": True, "turnComplete": True}},
    {"serverContent": {}},
    {"usageMetadata": {"promptTokenCount": 373, "responseTokenCount": 23, "totalTokenCount": 396,
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 373}],
                       "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 23}]}},
    {"usageMetadata": {"promptTokenCount": 10}},  # proto3 leaves zeros out
    {"usageMetadata": {"promptTokenCount": 5, "responseTokenCount": 2, "totalTokenCount": 0}},
    {"serverContent": {"turnComplete": True}, "usageMetadata": {"responseTokenCount": 4}},
    {"sessionResumptionUpdate": {"newHandle": "h-1", "resumable": True}},
    {"sessionResumptionUpdate": {"newHandle": "h-2", "resumable": True,
                                 "lastConsumedClientMessageIndex": "12"}},
    {"sessionResumptionUpdate": {}},  # "not now"
    {"sessionResumptionUpdate": {"resumable": False}},
]  # fmt: skip


@pytest.mark.parametrize("message", _BOOKKEEPING, ids=lambda m: json.dumps(m)[:60])
async def test_a_turns_bookkeeping_takes_the_fast_path_and_reads_as_through_the_sdk(
    message: dict[str, Any],
) -> None:
    raw = json.dumps(message).encode()
    fast = fast_path.model_control(raw)
    assert fast is not None, "bookkeeping of the usual shape must take the fast path"
    assert fast == _translate(await _sdk_parse(raw))
    assert fast_path.model_control(raw.decode()) == fast


# Each mostly of the accepted shape (so that many examples take the fast path), now and then not.
_FLAG_VALUES = st.one_of(st.booleans(), st.sampled_from([None, 1, 0, "true", [], {}]))
_COUNT_VALUES = st.one_of(
    st.integers(0, 500),
    st.integers(-3, 2**64),
    st.sampled_from([True, 1.0, "5", "x", None, [], 2**63, 2**62 + 1]),
)
_DETAILS = st.lists(
    st.dictionaries(
        st.sampled_from(["modality", "tokenCount", "other"]),
        st.one_of(st.sampled_from(["TEXT", "AUDIO", "audio", "NEW_KIND", None]), _COUNT_VALUES),
        max_size=3,
    ),
    max_size=2,
)
_SERVER_CONTENT = st.dictionaries(
    st.sampled_from(["turnComplete", "generationComplete", "interrupted"] * 3
                    + ["waitingForInput", "turn_complete"]),
    _FLAG_VALUES, max_size=3,
)  # fmt: skip
_USAGE = st.dictionaries(
    st.sampled_from(["promptTokenCount", "responseTokenCount", "totalTokenCount"] * 3
                    + ["thoughtsTokenCount", "promptTokensDetails", "responseTokensDetails",
                       "trafficType"]),
    st.one_of(_COUNT_VALUES, _DETAILS), max_size=4,
)  # fmt: skip
_UPDATE = st.dictionaries(
    st.sampled_from(["newHandle", "resumable", "lastConsumedClientMessageIndex", "extra"]),
    st.one_of(st.sampled_from(["h", "", "12", "0012", " 3", "-1", "1e3", "٣"]), _FLAG_VALUES,
              _COUNT_VALUES),
    max_size=3,
)  # fmt: skip
_COUNTS = st.sampled_from(["promptTokenCount", "responseTokenCount", "totalTokenCount"])
_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "serverContent": st.one_of(
            st.dictionaries(st.sampled_from(sorted(fast_path._TURN_FLAGS)), st.booleans()),
            _SERVER_CONTENT,
            st.none(),
        ),
        "usageMetadata": st.one_of(
            st.dictionaries(_COUNTS, st.integers(0, 500)), _USAGE, st.none()
        ),
        "sessionResumptionUpdate": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "newHandle": st.text(max_size=8),
                    "resumable": st.booleans(),
                    "lastConsumedClientMessageIndex": st.integers(0, 10**6).map(str),
                },
            ),
            _UPDATE,
            st.none(),
        ),
        "goAway": st.just({"timeLeft": "5s"}),
    },
)


@settings(max_examples=400, deadline=None)
@given(message=_MESSAGE)
async def test_bookkeeping_the_fast_path_reads_it_reads_as_the_sdk_does(
    message: dict[str, Any],
) -> None:
    raw = json.dumps(message).encode()
    fast = fast_path.model_control(raw)
    if fast is None:
        return  # the SDK's to read (the cases above check that the usual shapes are not)
    assert fast == _translate(await _sdk_parse(raw))


def test_bookkeeping_with_anything_else_is_left_to_the_sdk() -> None:
    for message in [
        {"serverContent": {"turnComplete": True}, "goAway": {"timeLeft": "5s"}},
        {"serverContent": {"turnComplete": True, "outputTranscription": {"text": "a"}}},
        {"serverContent": {"turnComplete": "true"}},
        {"serverContent": None},
        {"usageMetadata": {"promptTokenCount": 1.0}},
        {"usageMetadata": {"trafficType": "ON_DEMAND"}},
        {"sessionResumptionUpdate": {"newHandle": 7, "resumable": True}},
        {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True,
                                     "lastConsumedClientMessageIndex": "-1"}},
        {"toolCall": {"functionCalls": [{"name": "f", "id": "1"}]}},
        {},
    ]:  # fmt: skip
        assert fast_path.model_control(json.dumps(message)) is None, message
    assert fast_path.model_control(b"not json") is None
    assert fast_path.model_control(b"[1]") is None
    padded = {"serverContent": {"turnComplete": True}, "usageMetadata": {}}
    assert fast_path.model_control(json.dumps(padded) + " " * 5000) is None  # too long to look at


class _FrameSocket:
    """websockets' shape as the tap's lane sees it: a frame handler in front of a buffer."""

    def __init__(self) -> None:
        self.recv_messages = SimpleNamespace(frames=[])
        self.processed: list[Frame] = []
        self._never = asyncio.Event()

    def process_event(self, event: Frame) -> None:
        self.processed.append(event)

    async def recv(self, decode: bool | None = None) -> str:
        await self._never.wait()
        raise AssertionError("unreachable")


async def test_the_tap_delivers_only_whole_fast_path_frames_read_with_nothing_buffered() -> None:
    ws = _FrameSocket()
    taken: list[tuple[int, bytes]] = []
    lane_open = [True]
    lane = _Lane(lambda generation: lane_open[0], lambda g, pcm: taken.append((g, pcm)) or True)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=3)
    tap = _AudioTap(ws, 3, queue, structlog.get_logger("t"), lane)
    audio = Frame(Opcode.BINARY, _audio_message([b"\x01\x02"]))
    turn_done = Frame(Opcode.BINARY, b'{"serverContent": {"turnComplete": true}}')
    ws.process_event(audio)  # nobody reads yet: websockets' way
    assert ws.processed == [audio] and not taken
    reader = asyncio.create_task(tap.recv(decode=False))
    await asyncio.sleep(0)
    ws.process_event(audio)  # read while the reader waits, the lane open: the lane's
    assert taken == [(3, b"\x01\x02")] and ws.processed == [audio]
    others = [
        Frame(Opcode.TEXT, _audio_message([b"\x03\x04"]), fin=False),  # a fragment
        Frame(Opcode.TEXT, b'{"toolCall": {"functionCalls": [{"name": "f", "id": "1"}]}}'),
        Frame(Opcode.PING, b""),
    ]
    for frame in others:  # not the fast path's: websockets' way, for the SDK
        ws.process_event(frame)
    assert ws.processed == [audio, *others] and queue.empty()
    ws.process_event(turn_done)  # bookkeeping: its events straight onto the session's queue
    assert queue.get_nowait() == (3, TurnComplete())
    ws.recv_messages.frames.append(audio)  # something buffered ahead: websockets' way
    ws.process_event(audio)
    ws.process_event(turn_done)
    assert ws.processed == [audio, *others, audio, turn_done] and queue.empty()
    ws.recv_messages.frames.clear()
    lane_open[0] = False  # the session says no (consumer busy, queue not empty...)
    ws.process_event(audio)  # audio then goes onto the session's queue, as recv would put it
    ws.process_event(Frame(Opcode.TEXT, bytearray(_audio_message([b"\x05\x06"]))))
    assert [queue.get_nowait(), queue.get_nowait()] == [
        (3, AudioOut(b"\x01\x02")),
        (3, AudioOut(b"\x05\x06")),  # the reader's bytearray is read too
    ]
    for _ in range(3):
        ws.process_event(turn_done)
    ws.process_event(turn_done)  # no room left on the session's queue: websockets' way
    assert queue.full() and ws.processed[-1] is turn_done and len(ws.processed) == 7
    lane_open[0] = True
    ws.process_event(audio)
    assert len(taken) == 2
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    ws.process_event(audio)  # the reader gone: websockets' way again
    assert ws.processed[-1] is audio and len(taken) == 2


async def test_a_tap_without_a_lane_leaves_the_socket_alone() -> None:
    ws = _FrameSocket()
    handler = ws.process_event
    _AudioTap(ws, 1, asyncio.Queue(), structlog.get_logger("t"))
    assert ws.process_event == handler
