"""The two Live messages of the audio hot path, handled without the SDK's generic machinery.

Each call moves ~50 audio messages a second to Gemini and ~25 back. For every one of them the
SDK runs pydantic validation, its camelCase/snake_case converters and a dict walk, which under
load cost more CPU than everything else the gateway does with the audio (benchmarks/README.md
has the profiles). So, for exactly these two shapes and nothing else:

- :func:`realtime_audio_message` builds the ``realtime_input.audio`` message as a string;
- :func:`model_audio` recognises a server message that is *only* model audio and returns its
  PCM; any other message (a transcription, ``turnComplete``, a tool call, an audio message with
  anything extra in it) returns None and goes through the SDK as usual;
- :func:`model_transcript` recognises a message that is *only* a piece of transcription (the
  service sends them between the audio chunks, several a second while either side speaks):
  the SDK took 45 µs to parse each, against 2 µs here;
- :func:`model_control` reads a message that is only a turn's bookkeeping (``turnComplete``,
  ``generationComplete``, ``interrupted``, ``usageMetadata``, a resumption handle): three or
  four of them end every model turn, and through the SDK they cost 5 % of the gateway's CPU
  under load (benchmarks/README.md, "The turn's bookkeeping without the SDK").

Tests pin both to the SDK's own behaviour (tests/test_live_fast_path.py), and :func:`usable`
checks the same at run time, once per process, against the SDK actually installed: the session
must keep its socket in ``_ws`` and the SDK's converters must produce and accept exactly these
bytes. Otherwise the SDK path is used, with one warning. :func:`understood` tells frames the SDK
can parse from those that would make it raise (no top-level key it knows), which the receive
side skips instead of taking the connection for dead.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

import structlog
import websockets.exceptions
from google import genai
from google.genai import types

from gateway import wire
from gateway.mediaplane import model_audio as plain_model_audio
from gateway.model.events import (
    HandleUpdated,
    Interrupted,
    LiveEvent,
    TurnComplete,
    UsageReported,
)

INPUT_MIME: Final = "audio/pcm;rate=16000"
_PREFIX: Final = '{"realtime_input":{"audio":{"data":"'
_SUFFIX: Final = '","mime_type":"' + INPUT_MIME + '"}}}'
#: A cheap pre-check on the raw frame before parsing it: every audio message contains it.
_AUDIO_HINT: Final = b"inlineData"
#: Likewise for transcriptions (``inputTranscription``, ``outputTranscription``).
_TRANSCRIPT_HINT: Final = b"Transcription"
#: The transcription fields of ``serverContent`` → which side spoke.
_TRANSCRIPTS: Final = {"inputTranscription": "caller", "outputTranscription": "agent"}
#: The top-level keys of a message :func:`model_control` reads, and what it accepts in each.
_CONTROL_KEYS: Final = frozenset({"serverContent", "usageMetadata", "sessionResumptionUpdate"})
_TURN_FLAGS: Final = frozenset({"turnComplete", "generationComplete", "interrupted"})
_USAGE_COUNTS: Final = frozenset({
    "promptTokenCount", "responseTokenCount", "totalTokenCount", "cachedContentTokenCount",
    "toolUsePromptTokenCount", "thoughtsTokenCount",
})  # fmt: skip
_USAGE_DETAILS: Final = frozenset({
    "promptTokensDetails", "cacheTokensDetails", "responseTokensDetails",
    "toolUsePromptTokensDetails",
})  # fmt: skip
_MODALITIES: Final = frozenset(str(m.value) for m in types.MediaModality)
_HANDLE_FIELDS: Final = frozenset({"newHandle", "resumable", "lastConsumedClientMessageIndex"})
#: Bookkeeping messages are a few hundred bytes; anything longer is not parsed here.
_CONTROL_MAX_BYTES: Final = 4096


def realtime_audio_message(pcm16k: bytes) -> str:
    """The ``realtime_input.audio`` message, exactly as ``send_realtime_input`` builds it."""
    return _PREFIX + wire.urlsafe_b64encode(pcm16k) + _SUFFIX


#: :func:`realtime_audio_message` as the bytes around its base64 (``DirectSender``'s
#: ``write_base64`` builds the frame in one piece).
AUDIO_MESSAGE_PREFIX: Final = _PREFIX.encode()
AUDIO_MESSAGE_SUFFIX: Final = _SUFFIX.encode()


def model_audio(raw: bytes | str) -> bytes | None:
    """The 24 kHz PCM of a server message that carries model audio and nothing else, else None.

    Shape accepted: ``{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType":
    "audio/pcm;rate=24000", "data": "<base64>"}}, ...]}}}`` (role allowed, nothing else).
    Several parts are joined in order. None is also returned for anything malformed, so the SDK
    gets to report it as it always does.

    The plain form of that shape (strings without escapes, standard base64, no repeated key:
    what Gemini sends) is read in one C call (:func:`gateway.mediaplane.model_audio`), which
    answers only as this function would (tests/test_mediaplane.py); anything else is read here.
    """
    pcm = plain_model_audio(raw)
    if pcm is not None:
        return pcm
    return read_model_audio(raw)


def read_model_audio(raw: bytes | str) -> bytes | None:
    """:func:`model_audio` read in Python alone: the specification of the C reader."""
    content = _only_server_content(raw, _AUDIO_HINT)
    if content is None:
        return None
    turn = content.get("modelTurn")
    if not isinstance(turn, dict) or not turn.keys() <= {"parts", "role"}:
        return None
    parts = turn.get("parts")
    if not isinstance(parts, list) or not parts:
        return None
    chunks = [_part_audio(part) for part in parts]
    if any(chunk is None for chunk in chunks):
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # type: ignore[arg-type]


def model_transcript(raw: bytes | str) -> tuple[str, str] | None:
    """``("caller" | "agent", text)`` of a message that is a transcription piece and nothing
    else, else None (also for an empty text, which the session ignores anyway).

    Shape accepted: ``{"serverContent": {"inputTranscription" | "outputTranscription":
    {"text": "<text>"}}}``. A transcription with any other field (``finished``, a language), or
    sharing its message with anything, is left to the SDK.
    """
    content = _only_server_content(raw, _TRANSCRIPT_HINT)
    if content is None:
        return None
    ((field, transcription),) = content.items()
    speaker = _TRANSCRIPTS.get(field)
    if speaker is None or not isinstance(transcription, dict) or transcription.keys() != {"text"}:
        return None
    text = transcription["text"]
    if not isinstance(text, str) or not text:
        return None
    return speaker, text


def model_control(raw: bytes | str) -> list[LiveEvent] | None:
    """The events of a message that is only a turn's bookkeeping, as the SDK path would give
    them and in its order; None for anything else, which the SDK then reads.

    Shape accepted, each key optional but at least one: ``serverContent`` holding only the
    booleans ``turnComplete``, ``generationComplete`` and ``interrupted``; ``usageMetadata``
    holding only integer counts and per-modality details; ``sessionResumptionUpdate`` holding
    only ``newHandle`` (a string), ``resumable`` (a boolean) and
    ``lastConsumedClientMessageIndex`` (an int64, which proto3 JSON writes as a string of
    digits). Anything else in any of them, or a value of another type, and the SDK reads it.
    """
    if len(raw) > _CONTROL_MAX_BYTES:
        return None
    try:
        message = wire.loads(raw)  # no number beyond 64 bits is accepted below: exact here
    except ValueError:
        return None
    if not isinstance(message, dict) or not message or not message.keys() <= _CONTROL_KEYS:
        return None
    events: list[LiveEvent] = []
    if "serverContent" in message:
        flags = message["serverContent"]
        if not isinstance(flags, dict) or not flags.keys() <= _TURN_FLAGS:
            return None
        if not all(type(value) is bool for value in flags.values()):
            return None
        if flags.get("interrupted"):
            events.append(Interrupted())
        if flags.get("turnComplete"):
            events.append(TurnComplete())
    if "sessionResumptionUpdate" in message:
        handle = _handle(message["sessionResumptionUpdate"])
        if handle is None:
            return None
        events += handle
    if "usageMetadata" in message:
        usage = _usage(message["usageMetadata"])
        if usage is None:
            return None
        events.append(usage)
    return events


def _handle(update: Any) -> list[LiveEvent] | None:
    """``sessionResumptionUpdate``'s event ([] for "not now"), None if not of the shape."""
    if not isinstance(update, dict) or not update.keys() <= _HANDLE_FIELDS:
        return None
    handle = update.get("newHandle", "")
    resumable = update.get("resumable", False)
    consumed = update.get("lastConsumedClientMessageIndex")
    if type(handle) is not str or type(resumable) is not bool:
        return None
    if consumed is not None:
        consumed = _count(consumed, digits_allowed=True)
        if consumed is None:
            return None
    # An empty update means "not now", never "forget" (as in the session's _translate).
    return [HandleUpdated(handle, consumed)] if resumable and handle else []


def _usage(usage: Any) -> UsageReported | None:
    """``usageMetadata`` as the session reports it, None if not of the shape."""
    if not isinstance(usage, dict) or not usage.keys() <= _USAGE_COUNTS | _USAGE_DETAILS:
        return None
    counts: dict[str, int] = {}
    for key, value in usage.items():
        if key in _USAGE_COUNTS:
            count = _count(value, digits_allowed=False)
            if count is None:
                return None
            counts[key] = count
        elif not isinstance(value, list) or not all(_is_detail(item) for item in value):
            return None
    prompt = counts.get("promptTokenCount", 0)
    response = counts.get("responseTokenCount", 0)
    return UsageReported(prompt, response, counts.get("totalTokenCount") or prompt + response)


def _is_detail(item: Any) -> bool:
    """``{"modality": "AUDIO", "tokenCount": 23}``, either key optional."""
    if not isinstance(item, dict) or not item.keys() <= {"modality", "tokenCount"}:
        return False
    modality, count = item.get("modality", "TEXT"), item.get("tokenCount", 0)
    return modality in _MODALITIES and _count(count, digits_allowed=False) is not None


def _count(value: Any, *, digits_allowed: bool) -> int | None:
    """A JSON integer in 0..2**62 (or its decimal string, for int64 fields), else None."""
    if type(value) is int:
        return value if 0 <= value <= 2**62 else None
    if digits_allowed and type(value) is str and 0 < len(value) <= 18:
        return int(value) if value.isascii() and value.isdigit() else None
    return None


def _only_server_content(raw: bytes | str, hint: bytes) -> dict[str, Any] | None:
    """The ``serverContent`` of a message that is that and nothing else, holding exactly one
    field; None otherwise, or when ``hint`` is not in the raw frame (no parse then)."""
    if (hint if isinstance(raw, bytes) else hint.decode()) not in raw:  # type: ignore[operator]
        return None
    try:
        message = wire.loads(raw)  # no number is read from either shape: exact here
    except ValueError:
        return None
    if not isinstance(message, dict) or len(message) != 1:
        return None
    content = message.get("serverContent")
    if not isinstance(content, dict) or len(content) != 1:
        return None
    return content


def _part_audio(part: Any) -> bytes | None:
    if not isinstance(part, dict) or len(part) != 1:
        return None
    blob = part.get("inlineData")
    if not isinstance(blob, dict) or not blob.keys() <= {"mimeType", "data"}:
        return None
    mime, data = blob.get("mimeType"), blob.get("data")
    if not isinstance(data, str) or not data or not isinstance(mime, str):
        return None
    if mime.replace(" ", "") != "audio/pcm;rate=24000":
        return None
    try:
        if "-" in data or "_" in data:
            return wire.urlsafe_b64decode(data)
        return wire.b64decode_strict(data)
    except (binascii.Error, ValueError):
        return None


#: Top-level keys of a server message the SDK's converter reads (camelCase, as the server
#: writes them); a frame with none of them makes ``AsyncSession._receive`` raise.
KNOWN_SERVER_KEYS: Final = frozenset(
    field.alias or name for name, field in types.LiveServerMessage.model_fields.items()
)


def understood(raw: bytes | str) -> bool:
    """False for a frame the SDK would fail on: valid JSON with no top-level key it knows.

    Anything else (including malformed JSON and error frames with a ``code``) goes to the SDK,
    which reports it in its usual way.
    """
    try:
        message = json.loads(raw)
    except ValueError:
        return True
    if not isinstance(message, dict) or not message or "code" in message:
        return True
    return any(message.get(key) is not None for key in KNOWN_SERVER_KEYS)


def keys_of(raw: bytes | str) -> list[str]:
    """The top-level keys of a frame, shortened, for a log line (never the content)."""
    try:
        message = json.loads(raw)
    except ValueError:
        return []
    return [str(key)[:40] for key in list(message)[:5]] if isinstance(message, dict) else []


_verdict: bool | None = None


async def usable(client: genai.Client, log: structlog.stdlib.BoundLogger) -> bool:
    """Whether the fast paths match the installed SDK (checked once per process)."""
    global _verdict
    if _verdict is None:
        problem = await sdk_mismatch(client)
        _verdict = problem is None
        if problem is not None:
            log.warning("live.fast_path_disabled", reason=problem)
    return _verdict


async def sdk_mismatch(client: genai.Client) -> str | None:
    """What differs between the fast paths and the SDK, or None: a sample sent and received
    through a real ``AsyncSession`` built around a recording socket."""
    from google.genai import live  # the SDK's live module: only needed for this check

    sample = bytes(range(256)) * 3  # every byte value; its base64 has '+' and '/' (or - _)
    frame = json.dumps(
        {
            "serverContent": {
                "modelTurn": {
                    "parts": [
                        {
                            "inlineData": {
                                "mimeType": "audio/pcm;rate=24000",
                                "data": base64.b64encode(sample).decode(),
                            }
                        }
                    ]
                }
            }
        }
    )
    socket = _RecordingSocket(frame)
    try:
        session = live.AsyncSession(api_client=client._api_client, websocket=socket)  # type: ignore[arg-type]
        if getattr(session, "_ws", None) is not socket:
            return "the SDK session does not keep its socket in _ws"
        await session.send_realtime_input(audio=types.Blob(data=sample, mime_type=INPUT_MIME))
        if len(socket.sent) != 1 or json.loads(socket.sent[0]) != json.loads(
            realtime_audio_message(sample)
        ):
            return "the SDK builds realtime audio messages differently"
        async for message in session.receive():
            parts = message.server_content.model_turn.parts  # type: ignore[union-attr]
            if parts[0].inline_data.data != sample or model_audio(frame) != sample:  # type: ignore[index,union-attr]
                return "the SDK reads model audio differently"
            break
        else:
            return "the SDK did not read the sample frame through recv"
    except Exception as exc:  # any surprise means "do not assume"
        return f"{type(exc).__name__}: {exc}"
    return None


class _RecordingSocket:
    """Enough of a websocket for :func:`sdk_mismatch`: records sends, yields one frame."""

    def __init__(self, frame: str) -> None:
        self.sent: list[str] = []
        self._frames = [frame]

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def recv(self, decode: bool | None = None) -> str | bytes:
        if not self._frames:
            raise websockets.exceptions.ConnectionClosedOK(None, None)
        frame = self._frames.pop(0)
        return frame.encode() if decode is False else frame

    async def close(self) -> None:
        return None
