"""One distinct, deterministic tone pitch per voice: the Gemini Live voices and the OpenAI
Realtime ones (the Realtime simulator speaks with the same table).

The simulator cannot synthesise speech, so each voice "speaks" a sine tone at its own pitch. A
test that only sees what the caller heard (for example μ-law audio on a carrier websocket) can
then tell which voice, and therefore which agent, was speaking: estimate the dominant frequency
and call :func:`voice_for_pitch`.

The 30 prebuilt Gemini voices sit on a 24 Hz grid from 200 Hz to 896 Hz, and the 10 OpenAI
voices continue it from 920 Hz to 1136 Hz (all well inside the 4 kHz band of an 8 kHz phone
line), so a test can tell every voice of either provider apart. Names are matched
case-insensitively. Unknown names are hashed stably (SHA-256, not Python's salted ``hash``) onto
the midpoints between the Gemini grid lines, so they are at least 12 Hz away from every known
voice and the same name gets the same pitch in every process.
"""

from __future__ import annotations

import hashlib

VOICES: tuple[str, ...] = (
    "Zephyr",
    "Kore",
    "Orus",
    "Autonoe",
    "Umbriel",
    "Erinome",
    "Laomedeia",
    "Schedar",
    "Achird",
    "Sadachbia",
    "Puck",
    "Fenrir",
    "Aoede",
    "Enceladus",
    "Algieba",
    "Algenib",
    "Achernar",
    "Gacrux",
    "Zubenelgenubi",
    "Sadaltager",
    "Charon",
    "Leda",
    "Callirrhoe",
    "Iapetus",
    "Despina",
    "Rasalgethi",
    "Alnilam",
    "Pulcherrima",
    "Vindemiatrix",
    "Sulafat",
)
"""The prebuilt Gemini Live voices, in the order the documentation lists them."""

OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
"""The OpenAI Realtime voices (GA), continuing the pitch grid after the Gemini voices."""

ALL_VOICES: tuple[str, ...] = VOICES + OPENAI_VOICES
"""Every voice with a grid slot; no name appears twice, even ignoring case."""

DEFAULT_VOICE = "Puck"
"""The voice Gemini Live uses when the setup names none."""

LOWEST_PITCH_HZ = 200.0
PITCH_STEP_HZ = 24.0

_PITCH_BY_NAME: dict[str, float] = {
    name.casefold(): LOWEST_PITCH_HZ + index * PITCH_STEP_HZ
    for index, name in enumerate(ALL_VOICES)
}


def voice_pitch_hz(voice_name: str) -> float:
    """Return the tone pitch (Hz) the simulator uses for ``voice_name``.

    Known voices get a fixed grid slot; any other name (including "") gets a stable pitch halfway
    between two grid slots.
    """
    known = _PITCH_BY_NAME.get(voice_name.casefold())
    if known is not None:
        return known
    digest = hashlib.sha256(voice_name.casefold().encode("utf-8")).digest()
    slot = int.from_bytes(digest[:4], "big") % (len(VOICES) - 1)
    return LOWEST_PITCH_HZ + slot * PITCH_STEP_HZ + PITCH_STEP_HZ / 2


def voice_for_pitch(pitch_hz: float, tolerance_hz: float = PITCH_STEP_HZ / 4) -> str | None:
    """Return the known voice whose pitch is within ``tolerance_hz`` of ``pitch_hz``, if any."""
    best_name: str | None = None
    best_error = tolerance_hz
    for name in ALL_VOICES:
        error = abs(voice_pitch_hz(name) - pitch_hz)
        if error <= best_error:
            best_name, best_error = name, error
    return best_name
