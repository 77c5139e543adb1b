"""Live simulator resumption without sockets: a handle restores the session as of that handle
(the registry's rollback), the per-connection numbering of client messages and the last consumed
index a handle carries, and the wire shape of that index."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from callsim.live import messages
from callsim.live import protocol as proto
from callsim.live.audio import EnergyVad, tone_pcm16
from callsim.live.model import ConversationEngine, ModelOptions
from callsim.live.records import (
    ConnectionRecord,
    HistoryEntry,
    HistoryKind,
    SessionRecord,
)
from callsim.live.sessions import SessionRegistry

RESUMABLE = proto.parse_setup({"setup": {"model": "m", "sessionResumption": {}}})
TRIAGE = "Role: Triage"


def connection(index: int) -> ConnectionRecord:
    return ConnectionRecord(
        index=index, path="/ws", api_version="v1beta", method="", api_key="k", opened_at=0.0
    )


def resume_setup(handle: str) -> proto.SetupInfo:
    return proto.parse_setup({"setup": {"model": "m", "sessionResumption": {"handle": handle}}})


def add(
    session: SessionRecord,
    kind: HistoryKind,
    text: str,
    conn: int,
    *,
    trigger: str | None = None,
    seconds: float | None = None,
    message_index: int | None = None,
) -> None:
    session.history.append(
        HistoryEntry(
            kind=kind,
            text=text,
            connection_index=conn,
            voice="Puck",
            system_instruction=TRIAGE,
            at=0.0,
            trigger=trigger,
            seconds=seconds,
            message_index=message_index,
        )
    )


def utterance(session: SessionRecord, conn: int, seconds: float) -> None:
    session.caller_utterances += 1
    add(session, "caller", f"caller utterance {session.caller_utterances}", conn, seconds=seconds)
    add(session, "model", "I understand.", conn, trigger="caller")


def closed(_: int) -> bool:
    return False


# --- the registry's rollback -------------------------------------------------------------------


def test_resume_rolls_the_session_back_to_the_handle() -> None:
    registry = SessionRegistry()
    first = connection(0)
    session = registry.attach(first, RESUMABLE, is_open=closed, reject_while_open=True)
    utterance(session, 0, 1.2)
    point = registry.issue_handle(session, connection_index=0, last_consumed_index=40)
    assert (point.handle, point.history_length, point.caller_utterances) == ("sim-1-1", 2, 1)
    # After the handle: a text turn, a second utterance, a tool call; then the socket drops.
    add(session, "text", "my account number is 42", 0, message_index=41)
    add(session, "model", "Thanks.", 0, trigger="text", message_index=41)
    utterance(session, 0, 2.4)
    add(session, "tool_call", "lookup", 0, trigger="caller")
    assert session.caller_turns_answered(TRIAGE) == 2

    second = connection(1)
    assert registry.attach(second, resume_setup("sim-1-1"), is_open=closed, reject_while_open=True)
    assert second.resumed and second.resumed_from == "sim-1-1"
    assert second.rolled_back == 5
    assert [entry.lost for entry in session.history] == [False] * 2 + [True] * 5
    assert session.caller_utterances == 1
    assert session.texts() == ["caller utterance 1", "I understand."]
    assert session.texts("text") == []
    assert session.texts("text", include_lost=True) == ["my account number is 42"]
    assert session.heard_by(TRIAGE) == ["caller utterance 1"]
    assert session.caller_turns_answered(TRIAGE) == 1
    assert session.utterances_heard() == [1.2]
    assert session.utterances_heard(include_lost=True) == [1.2, 2.4]
    assert [entry.text for entry in session.lost][:2] == ["my account number is 42", "Thanks."]

    # The resumed connection hears the caller again: the model numbers from the handle's count.
    utterance(session, 1, 2.4)
    assert session.utterances_heard(1) == [2.4]
    assert session.heard_by(TRIAGE) == ["caller utterance 1", "caller utterance 2"]
    assert session.summary()["history"][2]["lost"] is True


def test_a_handle_leaves_out_messages_after_its_last_consumed_index() -> None:
    registry = SessionRegistry()
    record = connection(0)
    session = registry.attach(record, RESUMABLE, is_open=closed, reject_while_open=True)
    add(session, "text", "hi", 0, message_index=1)
    add(session, "model", "Hello.", 0, trigger="text", message_index=1)
    # Message 7, text sent while the caller's utterance (from message 2) was still open.
    add(session, "text", "while talking", 0, message_index=7)
    add(session, "model", "Sure.", 0, trigger="text", message_index=7)
    point = registry.issue_handle(session, connection_index=0, last_consumed_index=1)
    assert point.lost == frozenset({2, 3})
    # Only messages on the handle's own connection count: index 7 of connection 0 is not
    # index 7 of another connection.
    assert session.snapshot("x", 1, 1).lost == frozenset()
    add(session, "caller", "caller utterance 1", 0, seconds=0.5)

    resumed = connection(1)
    registry.attach(resumed, resume_setup(point.handle), is_open=closed, reject_while_open=True)
    assert resumed.rolled_back == 3
    assert session.texts() == ["hi", "Hello."]


def test_resuming_an_older_handle_restores_exactly_its_state() -> None:
    registry = SessionRegistry()
    session = registry.attach(connection(0), RESUMABLE, is_open=closed, reject_while_open=True)
    utterance(session, 0, 1.0)
    older = registry.issue_handle(session, connection_index=0, last_consumed_index=10).handle
    utterance(session, 0, 2.0)
    newer = registry.issue_handle(session, connection_index=0, last_consumed_index=20).handle

    one = connection(1)
    registry.attach(one, resume_setup(older), is_open=closed, reject_while_open=True)
    assert one.rolled_back == 2
    utterance(session, 1, 3.0)
    assert session.utterances_heard() == [1.0, 3.0]
    latest = registry.issue_handle(session, connection_index=1, last_consumed_index=5).handle
    assert session.points[latest].lost == frozenset({2, 3})

    two = connection(2)  # a client that resumes with a stale handle gets the stale state
    registry.attach(two, resume_setup(newer), is_open=closed, reject_while_open=True)
    assert two.rolled_back == 2
    assert session.utterances_heard() == [1.0, 2.0]
    assert session.caller_utterances == 2
    three = connection(3)
    registry.attach(three, resume_setup(latest), is_open=closed, reject_while_open=True)
    assert session.utterances_heard() == [1.0, 3.0]
    assert session.utterances_heard(include_lost=True) == [1.0, 2.0, 3.0]


def test_a_refused_resume_rolls_nothing_back() -> None:
    registry = SessionRegistry()
    session = registry.attach(connection(0), RESUMABLE, is_open=closed, reject_while_open=True)
    handle = registry.issue_handle(session, connection_index=0, last_consumed_index=1).handle
    utterance(session, 0, 1.0)
    with pytest.raises(proto.ProtocolError) as caught:
        registry.attach(
            connection(1), resume_setup(handle), is_open=lambda _: True, reject_while_open=True
        )
    assert caught.value.code == proto.CLOSE_INTERNAL_ERROR
    assert not any(entry.lost for entry in session.history)
    assert session.caller_utterances == 1


# --- wire and parsing ----------------------------------------------------------------------------


def test_transparent_setup_and_the_index_on_the_wire() -> None:
    setup = proto.parse_setup({"setup": {"model": "m", "sessionResumption": {"transparent": True}}})
    assert setup.transparent and setup.resumption_requested and setup.handle is None
    assert not RESUMABLE.transparent
    nulled = {"setup": {"model": "m", "session_resumption": {"transparent": None}}}
    assert not proto.parse_setup(proto.normalise_message(nulled)).transparent
    with pytest.raises(proto.ProtocolError, match="transparent"):
        proto.parse_setup({"setup": {"model": "m", "sessionResumption": {"transparent": "yes"}}})
    update = messages.resumption_update("sim-1-1", 12)
    # int64 in proto3 JSON is a string, as the real service writes it.
    assert update == {
        "sessionResumptionUpdate": {
            "newHandle": "sim-1-1",
            "resumable": True,
            "lastConsumedClientMessageIndex": "12",
        }
    }
    assert messages.summarise(update) == "sim-1-1 (last consumed 12)"
    assert "lastConsumedClientMessageIndex" not in json.dumps(messages.resumption_update("h"))


def test_message_kinds() -> None:
    def kind(message: proto.JsonObject) -> str:
        return proto.message_kind(proto.parse_client_message(proto.normalise_message(message)))

    audio = {"data": "AAAA", "mimeType": "audio/pcm;rate=16000"}
    assert kind({"realtimeInput": {"audio": audio}}) == "audio"
    assert kind({"realtimeInput": {"mediaChunks": [audio, audio]}}) == "audio"
    assert kind({"realtimeInput": {"text": "x", "activityStart": {}}}) == "text+activity_start"
    assert kind({"realtimeInput": {"audioStreamEnd": True}}) == "audio_stream_end"
    assert kind({"realtimeInput": {}}) == "empty"
    assert kind({"clientContent": {"turnComplete": True}}) == "client_content"
    assert kind({"toolResponse": {"functionResponses": [{"id": "f"}]}}) == "tool_response"
    assert kind({"contextUpdate": {}}) == "context_update"


def test_vad_reports_where_undecided_audio_starts() -> None:
    vad = EnergyVad(16000, start_ms=100, silence_ms=400)
    quiet = b"\x00\x00" * 320  # one 20 ms window = 640 bytes
    loud = tone_pcm16(1000.0, 0.02, level_dbfs=-20.0, rate=16000)
    vad.feed(quiet)
    assert vad.undecided_from is None
    vad.feed(quiet[:100])
    assert vad.undecided_from == 640  # a partial window waits for more audio
    vad.feed(quiet[100:])
    assert vad.undecided_from is None
    vad.feed(loud + loud)  # too short to be speech yet, but not decided either
    assert vad.undecided_from == 1280
    vad.feed(loud * 3)
    assert vad.in_speech and vad.undecided_from == 1280
    vad.feed(quiet * 20)
    assert not vad.in_speech and vad.undecided_from is None
    assert vad.byte_offset(0.04) == 1280


# --- the engine's last consumed index -----------------------------------------------------------

QUIET_20MS = b"\x00\x00" * 320
LOUD_20MS = tone_pcm16(1000.0, 0.02, level_dbfs=-20.0, rate=16000)


class Engine:
    """A ConversationEngine on a bare record, fed numbered client messages as the server does."""

    def __init__(self, setup: proto.SetupInfo) -> None:
        self.sent: list[proto.JsonObject] = []
        self.errors: list[BaseException] = []
        self.registry = SessionRegistry()
        self.record = connection(0)
        self.session = self.registry.attach(
            self.record, setup, is_open=closed, reject_while_open=True
        )
        self.index = 0

        self._sent = asyncio.Event()

        async def send(message: proto.JsonObject) -> None:
            self.sent.append(message)
            self._sent.set()

        self.engine = ConversationEngine(
            record=self.record,
            session=self.session,
            setup=setup,
            options=ModelOptions(think_ms=0, speed=1000.0),
            script=None,
            send=send,
            issue_handle=lambda consumed: (
                self.registry.issue_handle(
                    self.session, connection_index=0, last_consumed_index=consumed
                ).handle
            ),
            new_call_id=lambda: "call-1",
            on_error=self.errors.append,
        )

    @property
    def consumed(self) -> int:
        return self.engine.last_consumed_index

    async def send(self, message: proto.JsonObject) -> int:
        self.index += 1
        events = proto.parse_client_message(proto.normalise_message(message))
        await self.engine.handle_message(self.index, events)
        return self.index

    async def audio(self, pcm: bytes) -> int:
        blob = {"data": messages.encode_base64(pcm), "mimeType": "audio/pcm;rate=16000"}
        return await self.send({"realtimeInput": {"audio": blob}})

    async def wait_for_handles(self, n: int) -> list[tuple[str, int]]:
        async with asyncio.timeout(5):
            while len(self.record.handles_issued) < n:
                self._sent.clear()
                await self._sent.wait()
        return self.record.handles_issued


def text_only_setup(**resumption: bool) -> proto.SetupInfo:
    """A resumable setup answering in TEXT, so no audio 'plays' and nothing is a barge-in."""
    return proto.parse_setup(
        {
            "setup": {
                "model": "m",
                "sessionResumption": dict(resumption),
                "generationConfig": {"responseModalities": ["TEXT"]},
            }
        }
    )


@pytest.fixture
async def transparent() -> AsyncIterator[Engine]:
    engine = Engine(text_only_setup(transparent=True))
    yield engine
    await engine.engine.close()
    assert engine.errors == []


async def test_audio_is_consumed_once_the_vad_has_decided_on_it(transparent: Engine) -> None:
    e = transparent
    assert e.consumed == 0  # the setup
    await e.audio(QUIET_20MS)
    assert e.consumed == 1
    await e.audio(QUIET_20MS[:300])  # part of a 20 ms window: undecided
    assert e.consumed == 1
    await e.audio(QUIET_20MS[300:])
    assert e.consumed == 3
    onset = await e.audio(LOUD_20MS)  # too short for speech yet, but not decided either
    assert e.consumed == onset - 1
    for _ in range(9):
        await e.audio(LOUD_20MS)
    assert e.consumed == onset - 1  # the utterance is open
    for _ in range(19):
        await e.audio(QUIET_20MS)
    assert e.consumed == onset - 1  # still within the 400 ms of silence that end it
    end = await e.audio(QUIET_20MS)
    assert e.session.utterances_heard() == [0.2]
    assert e.consumed == end
    await e.wait_for_handles(1)


async def test_a_handle_during_an_open_utterance_leaves_out_a_later_text(
    transparent: Engine,
) -> None:
    e = transparent
    onset = await e.audio(LOUD_20MS)
    for _ in range(9):
        await e.audio(LOUD_20MS)
    text = await e.send({"realtimeInput": {"text": "while talking"}})
    ((handle, consumed),) = await e.wait_for_handles(1)  # the text turn ended
    assert consumed == onset - 1 == 0
    update = next(m for m in e.sent if m.get("sessionResumptionUpdate", {}).get("newHandle"))
    assert update["sessionResumptionUpdate"]["lastConsumedClientMessageIndex"] == "0"
    point = e.session.points[handle]
    left_out = [e.session.history[i] for i in sorted(point.lost)]
    assert [(entry.kind, entry.message_index) for entry in left_out] == [
        ("text", text),
        ("model", text),
    ]
    for _ in range(25):
        await e.audio(QUIET_20MS)  # the utterance ends; the model answers; a new handle
    handle, consumed = (await e.wait_for_handles(2))[1]
    assert consumed >= text + 20  # 400 ms of silence ended the utterance
    assert e.session.points[handle].lost == frozenset()


async def test_manual_activity_is_open_from_activity_start() -> None:
    setup = proto.parse_setup(
        {
            "setup": {
                "model": "m",
                "sessionResumption": {},
                "generationConfig": {"responseModalities": ["TEXT"]},
                "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
            }
        }
    )
    e = Engine(setup)
    try:
        await e.audio(LOUD_20MS)  # outside an activity: ignored, so consumed
        assert e.consumed == 1
        start = await e.send({"realtimeInput": {"activityStart": {}}})
        await e.audio(LOUD_20MS)
        assert e.consumed == start - 1
        end = await e.send({"realtimeInput": {"activityEnd": {}}})
        assert e.consumed == end
        assert e.session.utterances_heard() == [0.02]
        assert await e.wait_for_handles(1) == [("sim-1-1", end)]
        assert "lastConsumedClientMessageIndex" not in json.dumps(e.sent)  # not transparent
    finally:
        await e.engine.close()
    assert e.errors == []


async def test_a_response_to_a_call_this_connection_never_issued_is_stray(
    transparent: Engine,
) -> None:
    e = transparent
    response = {"id": "function-call-7", "name": "lookup", "response": {"ok": True}}
    await e.send({"toolResponse": {"functionResponses": [response]}})
    assert e.record.stray_tool_responses == [response]
    assert e.record.tool_responses == [response]
    assert e.session.history == []
