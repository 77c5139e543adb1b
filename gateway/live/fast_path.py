"""The two Live messages of the audio hot path, handled without the SDK's generic machinery.

Each call moves ~50 audio messages a second to Gemini and ~25 back. For every one of them the
SDK runs pydantic validation, its camelCase/snake_case converters and a dict walk, which under
load cost more CPU than everything else the gateway does with the audio (benchmarks/README.md
has the profiles). So, for exactly these two shapes and nothing else:

- :func:`realtime_audio_message` builds the ``realtime_input.audio`` message as a string;
- :func:`model_audio` recognises a server message that is *only* model audio and returns its
  PCM; any other message (a transcription, ``turnComplete``, a tool call, an audio message with
  anything extra in it) returns None and goes through the SDK as usual.

Tests pin both to the SDK's own behaviour (tests/test_live_fast_path.py), so an SDK or API change
makes them fail rather than silently diverge. Pure functions: no I/O, no state.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

INPUT_MIME: Final = "audio/pcm;rate=16000"
_PREFIX: Final = '{"realtime_input":{"audio":{"data":"'
_SUFFIX: Final = '","mime_type":"' + INPUT_MIME + '"}}}'
#: A cheap pre-check on the raw frame before parsing it: every audio message contains it.
_AUDIO_HINT: Final = b"inlineData"


def realtime_audio_message(pcm16k: bytes) -> str:
    """The ``realtime_input.audio`` message, exactly as ``send_realtime_input`` builds it."""
    return _PREFIX + base64.urlsafe_b64encode(pcm16k).decode("ascii") + _SUFFIX


def model_audio(raw: bytes | str) -> bytes | None:
    """The 24 kHz PCM of a server message that carries model audio and nothing else, else None.

    Shape accepted: ``{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType":
    "audio/pcm;rate=24000", "data": "<base64>"}}, ...]}}}`` (role allowed, nothing else).
    Several parts are joined in order. None is also returned for anything malformed, so the SDK
    gets to report it as it always does.
    """
    hint = _AUDIO_HINT if isinstance(raw, bytes) else _AUDIO_HINT.decode()
    if hint not in raw:  # type: ignore[operator]
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or len(message) != 1:
        return None
    content = message.get("serverContent")
    if not isinstance(content, dict) or len(content) != 1:
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
            return base64.urlsafe_b64decode(data)
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
