"""Audio for the Live simulator: the tone it speaks and the energy VAD it listens with. Pure
functions and a small state machine; no I/O (tests measure pitch and level with
``gateway.audio.analysis``).

All audio is mono PCM16 little-endian, the format of the Gemini Live API (16 kHz in, 24 kHz out).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from gateway.audio.g711 import pcm16_rms

INPUT_RATE = 16_000
OUTPUT_RATE = 24_000
VAD_WINDOW_MS = 20
FADE_MS = 5
_FULL_SCALE = 32768.0


@functools.lru_cache(maxsize=256)
def tone_pcm16(
    hz: float,
    seconds: float,
    level_dbfs: float = -12.0,
    rate: int = OUTPUT_RATE,
    fade_ms: float = FADE_MS,
) -> bytes:
    """A sine tone with linear fade-in/out (avoids clicks that would read as broadband speech).

    Cached: a scripted model says the same few lines in the same voices over and over, and
    synthesising them anew was a tenth of the simulator's CPU under load.
    """
    count = max(0, round(seconds * rate))
    if count == 0:
        return b""
    amplitude = 32767.0 * 10 ** (level_dbfs / 20)
    samples = amplitude * np.sin(2 * np.pi * hz * np.arange(count) / rate)
    fade = min(round(fade_ms * rate / 1000), count // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        samples[:fade] *= ramp
        samples[-fade:] *= ramp[::-1]
    return np.round(samples).astype("<i2").tobytes()


def split_chunks(pcm: bytes, chunk_bytes: int) -> list[bytes]:
    """Cut ``pcm`` into chunks of ``chunk_bytes`` (the last one may be shorter)."""
    if chunk_bytes <= 0 or chunk_bytes % 2:
        raise ValueError("chunk_bytes must be a positive even number")
    return [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]


@dataclass(frozen=True)
class SpeechStarted:
    """Speech onset; ``at_s`` is the start of the first loud window, in stream seconds."""

    at_s: float


@dataclass(frozen=True)
class SpeechEnded:
    """End of an utterance; ``duration_s`` spans the first to the last loud window."""

    at_s: float
    duration_s: float


VadEvent = SpeechStarted | SpeechEnded


class EnergyVad:
    """Energy voice-activity detector over fixed 20 ms windows.

    An utterance starts once ``start_ms`` of consecutive windows are above ``threshold_dbfs`` and
    ends once ``silence_ms`` of consecutive windows are below it. It works on stream time (the
    audio itself), so a client may send faster than real time and get the same decisions.
    """

    def __init__(
        self,
        sample_rate: int = INPUT_RATE,
        threshold_dbfs: float = -40.0,
        start_ms: int = 100,
        silence_ms: int = 400,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self.threshold_dbfs = threshold_dbfs
        self._window_samples = max(1, sample_rate * VAD_WINDOW_MS // 1000)
        self._window_s = self._window_samples / sample_rate
        self._start_windows = max(1, math.ceil(start_ms / VAD_WINDOW_MS))
        self._silence_windows = max(1, math.ceil(silence_ms / VAD_WINDOW_MS))
        self._threshold_rms = _FULL_SCALE * 10 ** (threshold_dbfs / 20)
        self._pending = bytearray()
        self._windows_seen = 0
        self._loud_run = 0
        self._quiet_run = 0
        self._speech_start_window: int | None = None
        self._last_loud_window = 0

    @property
    def in_speech(self) -> bool:
        return self._speech_start_window is not None

    @property
    def undecided_from(self) -> int | None:
        """Byte offset in the stream fed so far where audio not yet decided on starts, or None.

        Undecided: an utterance in progress (from its first loud window), a run of loud windows
        too short to be one yet, or a partial window waiting for more audio. Audio before this
        offset has had its full effect (an ended utterance, or nothing).
        """
        window_bytes = 2 * self._window_samples
        if self._speech_start_window is not None:
            return self._speech_start_window * window_bytes
        if self._loud_run:
            return (self._windows_seen - self._loud_run) * window_bytes
        if self._pending:
            return self._windows_seen * window_bytes
        return None

    def byte_offset(self, at_s: float) -> int:
        """Byte offset of a stream time reported by an event (``SpeechStarted.at_s``)."""
        return 2 * round(at_s * self.sample_rate)

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Add audio; return the onsets and ends it completes."""
        self._pending += pcm
        window_bytes = 2 * self._window_samples
        whole = len(self._pending) // window_bytes
        if whole == 0:
            return []
        block = bytes(self._pending[: whole * window_bytes])
        del self._pending[: whole * window_bytes]
        events: list[VadEvent] = []
        for start in range(0, len(block), window_bytes):
            loud = pcm16_rms(block[start : start + window_bytes]) > self._threshold_rms
            event = self._step(loud)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VadEvent]:
        """End the utterance in progress, if any (the client said its audio stream ended)."""
        self._pending.clear()
        self._loud_run = 0
        if self._speech_start_window is None:
            return []
        return [self._end()]

    def _step(self, loud: bool) -> VadEvent | None:
        index = self._windows_seen
        self._windows_seen += 1
        if self._speech_start_window is None:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run < self._start_windows:
                return None
            self._speech_start_window = index - self._loud_run + 1
            self._last_loud_window = index
            self._quiet_run = 0
            return SpeechStarted(at_s=self._speech_start_window * self._window_s)
        if loud:
            self._last_loud_window = index
            self._quiet_run = 0
            return None
        self._quiet_run += 1
        return self._end() if self._quiet_run >= self._silence_windows else None

    def _end(self) -> SpeechEnded:
        start = self._speech_start_window or 0
        event = SpeechEnded(
            at_s=self._windows_seen * self._window_s,
            duration_s=(self._last_loud_window + 1 - start) * self._window_s,
        )
        self._speech_start_window = None
        self._loud_run = 0
        self._quiet_run = 0
        return event
