"""Gemini Live (BidiGenerateContent) client messages, as the simulator reads them: decode a frame,
validate the setup, and turn later messages into events. Pure data in, data out (the h11 way).

Client JSON arrives in mixed casing (the google-genai SDK sends ``realtime_input`` with
``mime_type`` next to camelCase fields) and URL-safe base64, because the real service is a proto3
JSON parser that accepts both. :func:`normalise_keys` folds every key to lowerCamel, except inside
free-form maps whose keys are user data (function ``args``/``response``, ``labels``, JSON
schemas, and the property names of a schema's ``properties``).

Every malformed message raises :class:`ProtocolError` carrying the close code (1007, "invalid
frame payload data") and a reason for the client.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pybase64

from callsim.live.voices import DEFAULT_VOICE
from gateway import wire

JsonObject = dict[str, Any]

CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

DEFAULT_INPUT_RATE = 16_000

CLIENT_MESSAGE_KEYS = frozenset(
    {"setup", "clientContent", "realtimeInput", "toolResponse", "contextUpdate"}
)
_REALTIME_FIELDS = frozenset(
    {"mediaChunks", "audio", "video", "text", "activityStart", "activityEnd", "audioStreamEnd"}
)
_VERBATIM_KEYS = frozenset(
    {"args", "response", "labels", "parametersJsonSchema", "responseJsonSchema"}
)
_NAME_MAP_KEYS = frozenset({"properties", "defs"})
_URLSAFE = b"-_"


class ProtocolError(Exception):
    """The client broke the protocol; close the connection with ``code`` and ``reason``."""

    def __init__(self, reason: str, code: int = CLOSE_INVALID_DATA) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- normalisation ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # a client's keys are a few dozen, sent again and again
def to_lower_camel(key: str) -> str:
    """``voice_config`` -> ``voiceConfig``; keys without underscores are returned unchanged."""
    if "_" not in key or key.startswith("_"):
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalise_keys(value: Any) -> Any:
    """Recursively rename object keys to lowerCamel, leaving free-form maps untouched."""
    if isinstance(value, list):
        return [normalise_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    result: JsonObject = {}
    for key, item in value.items():
        name = to_lower_camel(key)
        if name in result:
            raise ProtocolError(f"duplicate field {name!r} (given in two spellings)")
        if name in _VERBATIM_KEYS:
            result[name] = item
        elif name in _NAME_MAP_KEYS and isinstance(item, dict):
            result[name] = {inner: normalise_keys(schema) for inner, schema in item.items()}
        else:
            result[name] = normalise_keys(item)
    return result


def decode_base64(text: object, where: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not.

    Text in the URL-safe alphabet alone (the SDK's, fifty frames a second per call) is
    decoded by ``pybase64`` first; whatever it refuses, and text with ``+`` or ``/`` in it,
    gets the standard library's answer, as every text did before.
    """
    if not isinstance(text, str):
        raise ProtocolError(f"{where} must be a base64 string")
    stripped = text.strip()
    padded = stripped + "=" * (-len(stripped) % 4)
    if "+" not in padded and "/" not in padded:
        try:
            return pybase64.b64decode(padded, altchars=_URLSAFE, validate=True)
        except ValueError:
            pass
    cleaned = padded.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{where} is not valid base64") from None


def decode_frame(data: str | bytes) -> JsonObject:
    """Decode one client frame (text, or binary holding UTF-8) into its raw JSON object."""
    return _decode_text(_frame_text(data))


def _frame_text(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("binary frame is not UTF-8 JSON") from None
    return data


def _decode_text(text: str) -> JsonObject:
    """``json.loads``'s object, read by ``orjson`` when it can (``gateway.wire.loads``: an
    integer beyond 64 bits may come back as a float, where no field the simulator reads
    holds one)."""
    try:
        message = wire.loads(text)
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def normalise_message(raw: JsonObject) -> JsonObject:
    """Normalise a raw message's keys and check it has exactly one known top-level field."""
    try:
        message: JsonObject = normalise_keys(raw)
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    return _one_known_field(message)


def _one_known_field(message: JsonObject) -> JsonObject:
    unknown = [key for key in message if key not in CLIENT_MESSAGE_KEYS]
    if unknown:
        raise ProtocolError(f"unknown message field {unknown[0]!r}")
    if len(message) != 1:
        raise ProtocolError(
            "a message must have exactly one of setup, clientContent, realtimeInput, toolResponse"
        )
    return message


def parse_frame(data: str | bytes) -> JsonObject:
    """Decode and normalise one client frame.

    A frame with no key to rename (every key its own lowerCamel form) would come out of
    :func:`normalise_keys` as a copy of itself: that pass is skipped for it. That is every
    caller-audio message (fifty a second per call: the simulator serves fifty calls on the
    load benchmarks' one core), whose only underscores are in its URL-safe base64. Its text
    holds no underscore and no escape, or its keys, looked at one by one, hold none.
    """
    text = _frame_text(data)
    raw = _decode_text(text)
    if ("_" in text or "\\" in text) and _some_key_renamed(raw):
        return normalise_message(raw)
    return _one_known_field(raw)


def _some_key_renamed(value: Any) -> bool:
    """Whether :func:`normalise_keys` could change a key of ``value`` (one holds an
    underscore; inside the free-form maps too, where it would change none: then it is only
    slower). True for a value nested too deeply to look at: the renaming pass refuses it."""
    try:
        return _has_underscore_key(value)
    except RecursionError:
        return True


def _has_underscore_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any("_" in key or _has_underscore_key(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_underscore_key(item) for item in value)
    return False


def message_type(message: JsonObject) -> str:
    """The single top-level key of a message accepted by :func:`parse_frame`."""
    return next(iter(message))


# --- setup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupInfo:
    """The parts of a ``setup`` message the simulator acts on."""

    model: str
    voice: str = DEFAULT_VOICE
    system_instruction: str = ""
    function_declarations: tuple[JsonObject, ...] = ()
    response_modalities: tuple[str, ...] = ("AUDIO",)
    resumption_requested: bool = False
    handle: str | None = None
    transparent: bool = False
    input_transcription: bool = False
    output_transcription: bool = False
    manual_activity: bool = False
    normalised: JsonObject = field(default_factory=dict, repr=False)


def parse_setup(message: JsonObject) -> SetupInfo:
    """Validate a normalised first message; it must be a ``setup`` naming a model."""
    setup = message.get("setup")
    if not isinstance(setup, dict):
        raise ProtocolError("the first message must be a setup")
    model = setup.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ProtocolError("setup.model is required")
    generation = _object(setup, "generationConfig", "setup")
    speech = _object(generation, "speechConfig", "setup.generationConfig")
    voice_config = _object(speech, "voiceConfig", "speechConfig")
    prebuilt = _object(voice_config, "prebuiltVoiceConfig", "voiceConfig")
    voice = prebuilt.get("voiceName") or DEFAULT_VOICE
    if not isinstance(voice, str):
        raise ProtocolError("voiceName must be a string")
    modalities = generation.get("responseModalities") or ["AUDIO"]
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ProtocolError("responseModalities must be a list of strings")
    resumption = setup.get("sessionResumption")
    if resumption is not None and not isinstance(resumption, dict):
        raise ProtocolError("sessionResumption must be an object")
    handle = (resumption or {}).get("handle") or None
    if handle is not None and not isinstance(handle, str):
        raise ProtocolError("sessionResumption.handle must be a string")
    transparent = (resumption or {}).get("transparent")
    if transparent is not None and not isinstance(transparent, bool):
        raise ProtocolError("sessionResumption.transparent must be a boolean")
    realtime_config = _object(setup, "realtimeInputConfig", "setup")
    detection = _object(realtime_config, "automaticActivityDetection", "realtimeInputConfig")
    return SetupInfo(
        model=model,
        voice=voice,
        system_instruction=_instruction_text(setup.get("systemInstruction")),
        function_declarations=_function_declarations(setup.get("tools")),
        response_modalities=tuple(m.upper() for m in modalities),
        resumption_requested=resumption is not None,
        handle=handle,
        transparent=transparent is True,
        input_transcription=isinstance(setup.get("inputAudioTranscription"), dict),
        output_transcription=isinstance(setup.get("outputAudioTranscription"), dict),
        manual_activity=detection.get("disabled") is True,
        normalised=setup,
    )


def same_model(left: str, right: str) -> bool:
    """Whether two model names are the same once the optional ``models/`` prefix is removed."""
    return left.removeprefix("models/") == right.removeprefix("models/")


def _object(parent: Mapping[str, Any], key: str, where: str) -> JsonObject:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}.{key} must be an object")
    return value


def _instruction_text(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise ProtocolError("systemInstruction must be a Content object with parts")
    return "\n".join(_content_texts(value, "systemInstruction"))


def _content_texts(content: Mapping[str, Any], where: str) -> list[str]:
    parts = content.get("parts") or []
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise ProtocolError(f"{where}.parts must be a list of objects")
    texts = []
    for part in parts:
        text = part.get("text")
        if text is not None and not isinstance(text, str):
            raise ProtocolError(f"{where}.parts[].text must be a string")
        if text:
            texts.append(text)
    return texts


def _function_declarations(tools: object) -> tuple[JsonObject, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ProtocolError("setup.tools must be a list of objects")
    declarations: list[JsonObject] = []
    for tool in tools:
        found = tool.get("functionDeclarations") or []
        if not isinstance(found, list):
            raise ProtocolError("functionDeclarations must be a list")
        for declaration in found:
            if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                raise ProtocolError("each function declaration needs a string name")
            declarations.append(declaration)
    return tuple(declarations)


# --- messages after setup --------------------------------------------------------------------


@dataclass(frozen=True)
class AudioIn:
    """Caller audio (PCM16 mono at ``rate``)."""

    pcm: bytes
    mime_type: str
    rate: int


@dataclass(frozen=True)
class OtherMediaIn:
    """Realtime media the simulator only records (video frames, non-PCM audio)."""

    mime_type: str
    size: int


@dataclass(frozen=True)
class TextIn:
    """``realtimeInput.text``."""

    text: str


@dataclass(frozen=True)
class ActivityIn:
    """``activityStart``, ``activityEnd`` or ``audioStreamEnd``."""

    kind: str


@dataclass(frozen=True)
class ClientContentIn:
    """``clientContent``: turns as (role, text) pairs, plus the raw message."""

    turns: tuple[tuple[str, str], ...]
    turn_complete: bool
    raw: JsonObject


@dataclass(frozen=True)
class ToolResponseIn:
    """``toolResponse.functionResponses``."""

    responses: tuple[JsonObject, ...]


@dataclass(frozen=True)
class ContextUpdateIn:
    """``contextUpdate`` (SDK 3.x); may replace the system instruction."""

    system_instruction: str | None
    raw: JsonObject


ClientEvent = (
    AudioIn
    | OtherMediaIn
    | TextIn
    | ActivityIn
    | ClientContentIn
    | ToolResponseIn
    | ContextUpdateIn
)


_EVENT_KINDS: dict[type, str] = {
    AudioIn: "audio",
    OtherMediaIn: "media",
    TextIn: "text",
    ClientContentIn: "client_content",
    ToolResponseIn: "tool_response",
    ContextUpdateIn: "context_update",
}


def parse_client_message(message: JsonObject) -> list[ClientEvent]:
    """Turn a normalised message (after setup) into events, in the order they apply."""
    kind = message_type(message)
    body = message[kind]
    if kind == "setup":
        raise ProtocolError("setup may only be sent once, as the first message")
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind} must be an object")
    if kind == "realtimeInput":
        return _realtime_events(body)
    if kind == "clientContent":
        return [_client_content(body)]
    if kind == "toolResponse":
        return [_tool_response(body)]
    unknown = sorted(set(body) - {"systemInstruction", "tools"})
    if unknown:
        raise ProtocolError(f"unknown contextUpdate field {unknown[0]!r}")
    instruction = body.get("systemInstruction")
    text = _instruction_text(instruction) if instruction is not None else None
    return [ContextUpdateIn(system_instruction=text, raw=body)]


def event_kind(event: ClientEvent) -> str:
    """Short name of an event for connection records: ``audio``, ``text``, ``tool_response`` ..."""
    if isinstance(event, ActivityIn):
        return {
            "activityStart": "activity_start",
            "activityEnd": "activity_end",
            "audioStreamEnd": "audio_stream_end",
        }.get(event.kind, event.kind)
    return _EVENT_KINDS[type(event)]


def message_kind(events: list[ClientEvent]) -> str:
    """Kind of a client message from its events: their kinds ``+``-joined, or ``empty``."""
    kinds = list(dict.fromkeys(event_kind(event) for event in events))
    return "+".join(kinds) if kinds else "empty"


def _realtime_events(body: JsonObject) -> list[ClientEvent]:
    unknown = sorted(set(body) - _REALTIME_FIELDS)
    if unknown:
        raise ProtocolError(f"unknown realtimeInput field {unknown[0]!r}")
    events: list[ClientEvent] = []
    chunks = body.get("mediaChunks", [])
    if not isinstance(chunks, list):
        raise ProtocolError("realtimeInput.mediaChunks must be a list")
    for chunk in chunks:
        events.append(_media(chunk, "realtimeInput.mediaChunks[]", audio=True))
    for name in ("audio", "video"):
        if body.get(name) is not None:
            events.append(_media(body[name], f"realtimeInput.{name}", audio=name == "audio"))
    text = body.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise ProtocolError("realtimeInput.text must be a string")
        events.append(TextIn(text))
    for name in ("activityStart", "activityEnd"):
        if body.get(name) is not None:  # proto3 JSON: null means absent
            if body[name] != {}:
                raise ProtocolError(f"realtimeInput.{name} must be an empty object")
            events.append(ActivityIn(name))
    stream_end = body.get("audioStreamEnd")
    if stream_end is not None and not isinstance(stream_end, bool):
        raise ProtocolError("realtimeInput.audioStreamEnd must be a boolean")
    if stream_end:
        events.append(ActivityIn("audioStreamEnd"))
    return events


def _media(blob: object, where: str, *, audio: bool) -> AudioIn | OtherMediaIn:
    if not isinstance(blob, dict):
        raise ProtocolError(f"{where} must be an object")
    mime_type = blob.get("mimeType", "")
    if not isinstance(mime_type, str):
        raise ProtocolError(f"{where}.mimeType must be a string")
    data = decode_base64(blob.get("data", ""), f"{where}.data")
    rate = pcm_rate(mime_type) if audio else None
    if rate is None:
        return OtherMediaIn(mime_type=mime_type, size=len(data))
    return AudioIn(pcm=data, mime_type=mime_type, rate=rate)


@functools.lru_cache(maxsize=64)  # a client sends one or two types, fifty times a second
def pcm_rate(mime_type: str) -> int | None:
    """Sample rate of a PCM MIME type (``audio/pcm;rate=16000``; bare ``audio/pcm`` is 16 kHz).

    An empty MIME type counts as 16 kHz PCM; any other type returns None.
    """
    if not mime_type.strip():
        return DEFAULT_INPUT_RATE
    media, *params = (part.strip() for part in mime_type.split(";"))
    if media.lower() != "audio/pcm":
        return None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "rate":
            try:
                rate = int(value.strip())
            except ValueError:
                raise ProtocolError(f"invalid rate in MIME type {mime_type!r}") from None
            if not 1_000 <= rate <= 192_000:
                raise ProtocolError(f"unsupported sample rate in MIME type {mime_type!r}")
            return rate
    return DEFAULT_INPUT_RATE


def _client_content(body: JsonObject) -> ClientContentIn:
    unknown = sorted(set(body) - {"turns", "turnComplete"})
    if unknown:
        raise ProtocolError(f"unknown clientContent field {unknown[0]!r}")
    turns = body.get("turns") or []
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise ProtocolError("clientContent.turns must be a list of Content objects")
    complete = body.get("turnComplete", False)
    if not isinstance(complete, bool):
        raise ProtocolError("clientContent.turnComplete must be a boolean")
    pairs: list[tuple[str, str]] = []
    for turn in turns:
        role = turn.get("role") or "user"
        if not isinstance(role, str):
            raise ProtocolError("clientContent.turns[].role must be a string")
        pairs.append((role, " ".join(_content_texts(turn, "clientContent.turns[]"))))
    return ClientContentIn(turns=tuple(pairs), turn_complete=complete, raw=body)


def _tool_response(body: JsonObject) -> ToolResponseIn:
    unknown = sorted(set(body) - {"functionResponses"})
    if unknown:
        raise ProtocolError(f"unknown toolResponse field {unknown[0]!r}")
    responses = body.get("functionResponses") or []
    if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
        raise ProtocolError("toolResponse.functionResponses must be a list of objects")
    for response in responses:
        if not isinstance(response.get("id", ""), str):
            raise ProtocolError("functionResponses[].id must be a string")
    return ToolResponseIn(responses=tuple(responses))
