"""The input audio buffer of one Realtime connection and the server VAD that listens to it.

Times are on the session's audio timeline, as the API reports them: milliseconds of all audio
appended since the connection opened (``audio_start_ms``, ``audio_end_ms``). The energy VAD is
the Live simulator's (``callsim.live.audio.EnergyVad``), fed the audio decoded to PCM16.
ASSUMPTION: ``audio_start_ms`` is the onset itself; the service may subtract
``prefix_padding_ms``. On speech end the whole pending buffer is committed (the service keeps
audio after ``audio_end_ms`` for the next item; the difference is silence).
"""

from __future__ import annotations

from dataclasses import dataclass

from callsim.live.audio import EnergyVad, SpeechStarted
from callsim.realtime.formats import AudioFormat


@dataclass(frozen=True)
class Onset:
    """Speech started at ``at_ms`` on the session's audio timeline."""

    at_ms: int


@dataclass(frozen=True)
class Stop:
    """Speech stopped at ``at_ms``; the utterance lasted ``seconds``."""

    at_ms: int
    seconds: float


class InputBuffer:
    """Audio appended since the last commit or clear, and the VAD state over it."""

    def __init__(self, threshold_dbfs: float, start_ms: int, silence_ms: int) -> None:
        self._threshold_dbfs = threshold_dbfs
        self._start_ms = start_ms
        self._silence_ms = silence_ms
        self.pending = bytearray()
        self.pending_ms = 0.0
        self.timeline_ms = 0.0
        self._vad: EnergyVad | None = None
        self._vad_format: AudioFormat | None = None
        self._vad_offset_ms = 0.0

    @property
    def in_speech(self) -> bool:
        return self._vad is not None and self._vad.in_speech

    def append(
        self, data: bytes, fmt: AudioFormat, *, vad: bool, silence_ms: int | None = None
    ) -> list[Onset | Stop]:
        """Add wire bytes in ``fmt``; with ``vad``, return the onsets and stops they complete."""
        self.pending += data
        self.pending_ms += fmt.duration_ms(data)
        start_ms = self.timeline_ms
        self.timeline_ms += fmt.duration_ms(data)
        if not vad:
            self._vad = None
            return []
        if self._vad is None or self._vad_format != fmt:
            self._vad = EnergyVad(
                fmt.rate, self._threshold_dbfs, self._start_ms, silence_ms or self._silence_ms
            )
            self._vad_format = fmt
            self._vad_offset_ms = start_ms
        events: list[Onset | Stop] = []
        for event in self._vad.feed(fmt.to_pcm16(data)):
            at_ms = round(self._vad_offset_ms + event.at_s * 1000)
            if isinstance(event, SpeechStarted):
                events.append(Onset(at_ms))
            else:
                events.append(Stop(at_ms, event.duration_s))
        return events

    def take(self) -> bytes:
        """Commit: hand over the pending audio and start a new buffer."""
        data = bytes(self.pending)
        self.pending.clear()
        self.pending_ms = 0.0
        return data

    def clear(self) -> None:
        """Drop the pending audio and forget an utterance in progress."""
        self.take()
        self._vad = None
