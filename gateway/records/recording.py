"""One call as a stereo WAV: caller left, agent right, on the timeline the caller heard.

Why these choices:

* **8 kHz, 16-bit PCM, stereo.** Every carrier format decodes to it (wideband calls are brought
  down with the project's anti-aliased resampler), any player opens it, and keeping the two
  parties on separate channels lets a reviewer, or a speech-to-text run, follow each one.
* **The caller's stream is the clock.** Caller frames arrive at the rate the phone speaks, so the
  caller channel simply advances by the samples it receives. Agent frames are placed where the
  playout says the carrier starts playing them (``starts_at`` relative to ``started_at``), not
  when the model produced them, and a barge-in (:meth:`CallRecording.cut`) removes whatever was
  scheduled after it: audio the caller never heard never reaches the file.
* **Written up to the caller's position only.** Agent audio ahead of it stays in memory, where a
  later ``cut`` can still take it back; the file's length is exactly the caller's audio.
* **Incremental, crash-safe enough.** About once a second (8000 caller samples) the buffered
  audio is appended and the RIFF and data sizes in the header are rewritten to cover it: after
  a SIGKILL the page cache still holds a WAV that ``wave`` and libsndfile open, missing at most
  the last second. No fsync: a power cut may lose more, which is not worth a disk flush a second
  per call.
* **Never fatal to the call.** It runs inside the call's coroutines (50 caller and 50 agent
  frames a second), so a write error is logged once and recording stops; the call goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import structlog

from gateway.audio import g711
from gateway.audio.g722 import G722Decoder
from gateway.audio.resample import StreamResampler, model_to_telephone, wideband_to_telephone
from gateway.audio.transcode import AudioFormat, UnsupportedAudioFormat

RATE: Final = 8000
"""Samples per second of the recording, each channel."""
CHANNELS: Final = 2
SAMPLE_BYTES: Final = 2

_FRAME_BYTES: Final = CHANNELS * SAMPLE_BYTES
_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_BYTES: Final = _HEADER.size  # 44
_SIZE: Final = struct.Struct("<I")
_RIFF_SIZE_AT: Final = 4
_DATA_SIZE_AT: Final = 40
#: Caller samples buffered before a write: one second, so one write and header update a second.
_FLUSH_SAMPLES: Final = RATE
#: A WAV's sizes are 32-bit: stop before the data would overflow them (about 37 hours).
_MAX_FRAMES: Final = (0xFFFFFFFF - _HEADER_BYTES) // _FRAME_BYTES
#: Agent frames starting within this many samples of where the last one ended are joined to it:
#: ``starts_at`` is float arithmetic, and a one-sample gap or overlap would be an audible click.
_JOIN_SAMPLES: Final = 2
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME: Final = 200
#: Recordings of one call id (stream restarts) before giving up on a free name.
_MAX_PARTS: Final = 99


def recording_path(directory: Path, call_id: str) -> Path:
    """Where the recording of ``call_id`` goes: ``<directory>/<call id>.wav``, made safe.

    Call ids come from the carrier (printable ASCII, possibly ``/``, ``..`` or ``:``), so every
    character outside ``[A-Za-z0-9_-]`` becomes ``_``: the file always lands in ``directory``
    and has a name every filesystem accepts.
    """
    name = _UNSAFE.sub("_", call_id)[:_MAX_NAME] or "call"
    return directory / f"{name}.wav"


class _ToTelephone:
    """One direction's carrier payloads -> PCM16LE at 8 kHz, with that direction's codec state.

    The agent's direction needs ``reset`` at a barge-in: the bridge restarts its G.722 encoder
    and resampler then, and decoding the new audio with the old state would click.
    """

    __slots__ = ("_decode", "_fmt", "_odd", "_resampler", "_swap")

    def __init__(self, fmt: AudioFormat) -> None:
        self._fmt = fmt
        self._odd = b""
        self._swap = fmt.encoding == "L16" and fmt.byteorder == "big"
        self._resampler: StreamResampler | None = None
        self._decode: Callable[[bytes], bytes] | None = None
        self.reset()

    def reset(self) -> None:
        fmt = self._fmt
        self._odd = b""
        if fmt.encoding == "PCMU" and fmt.sample_rate == RATE:
            self._decode = g711.ulaw_decode
        elif fmt.encoding == "PCMA" and fmt.sample_rate == RATE:
            self._decode = g711.alaw_decode
        elif fmt.encoding == "G722" and fmt.sample_rate == 16000:
            self._decode = G722Decoder().decode
            self._resampler = wideband_to_telephone()
        elif fmt.encoding == "L16" and fmt.sample_rate == 16000:
            self._decode = None  # PCM already; only the byte order may need a swap
            self._resampler = wideband_to_telephone()
        elif fmt.encoding == "L16" and fmt.sample_rate == 24000:  # the browser's agent side
            self._decode = None
            self._resampler = model_to_telephone()
        else:
            raise UnsupportedAudioFormat(f"cannot record {fmt}")

    def __call__(self, payload: bytes) -> bytes:
        if self._decode is not None:
            pcm = self._decode(payload)
        elif self._swap:
            if self._odd:  # half a sample from the last payload: keep the samples aligned
                payload, self._odd = self._odd + payload, b""
            if len(payload) & 1:
                self._odd = payload[-1:]
            pcm = g711.pcm16_byteswap(payload)
        else:
            pcm = payload  # little-endian L16; the resampler keeps an odd byte itself
        return pcm if self._resampler is None else self._resampler.process(pcm)


def _header(frames: int) -> bytes:
    data = frames * _FRAME_BYTES
    return _HEADER.pack(
        b"RIFF", _HEADER_BYTES - 8 + data, b"WAVE",
        b"fmt ", 16, 1, CHANNELS, RATE, RATE * _FRAME_BYTES, _FRAME_BYTES, 8 * SAMPLE_BYTES,
        b"data", data,
    )  # fmt: skip


def _interleave(left: bytearray, right: bytearray, frames: int) -> bytes:
    """The first ``frames`` samples of each channel as stereo PCM16LE; ``right`` may be short."""
    stereo = np.zeros((frames, CHANNELS), dtype="<i2")
    stereo[:, 0] = np.frombuffer(left, dtype="<i2", count=frames)
    agent = min(frames, len(right) // SAMPLE_BYTES)
    if agent:
        stereo[:agent, 1] = np.frombuffer(right, dtype="<i2", count=agent)
    return stereo.tobytes()


class CallRecording:
    """One call's stereo WAV.

    ``caller`` and ``agent``/``cut`` are the two sides' feeds; ``sent`` and ``cleared`` are the
    same two agent feeds under the names of the playout's tap, so the recording can be passed to
    ``Playout(tap=...)`` as it is.
    """

    def __init__(
        self,
        path: Path,
        file: BinaryIO,
        caller_pcm: _ToTelephone,
        agent_pcm: _ToTelephone,
        *,
        started_at: float,
        max_ahead_s: float,
    ) -> None:
        """Use :meth:`create`, which makes the file and its header."""
        self._path = path
        self._file: BinaryIO | None = file
        self._started_at = started_at
        self._caller_pcm = caller_pcm
        self._agent_pcm = agent_pcm
        #: Stereo frames in the file; both buffers below start at this position.
        self._written = 0
        self._caller = bytearray()
        self._agent = bytearray()
        #: Position one past the last agent sample placed (for joining consecutive frames).
        self._agent_end = 0
        self._max_ahead = int(max_ahead_s * RATE)
        #: Agent frames not kept: beyond ``max_ahead_s`` of the caller, or already written.
        self.agent_frames_dropped = 0
        #: Why recording stopped early (the file keeps what was written before), if it did.
        self.error: OSError | None = None

    @classmethod
    def create(
        cls,
        directory: Path,
        call_id: str,
        *,
        caller_format: AudioFormat,
        agent_format: AudioFormat,
        started_at: float,
        max_ahead_s: float = 600.0,
    ) -> CallRecording:
        """Start ``<directory>/<call id>.wav`` (``-2``, ``-3``... if the call was recorded before,
        as after a stream restart: an earlier part is never overwritten).

        ``started_at`` is ``time.monotonic()`` when the call began, the zero of the agent's
        timeline. Raises ``OSError`` if the file cannot be created and ``UnsupportedAudioFormat``
        for a format that cannot be decoded, before anything is written.
        """
        caller_pcm, agent_pcm = _ToTelephone(caller_format), _ToTelephone(agent_format)
        directory.mkdir(parents=True, exist_ok=True)
        first = path = recording_path(directory, call_id)
        for attempt in itertools.count(2):
            try:
                file = path.open("xb")
                break
            except FileExistsError:
                if attempt > _MAX_PARTS:
                    raise
                path = first.with_name(f"{first.stem}-{attempt}.wav")
        try:
            file.write(_header(0))
            file.flush()
        except OSError:
            file.close()
            raise
        return cls(
            path, file, caller_pcm, agent_pcm, started_at=started_at, max_ahead_s=max_ahead_s
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def frames_written(self) -> int:
        """Stereo sample frames in the file so far (its header says the same)."""
        return self._written

    def caller(self, payload: bytes) -> None:
        """One carrier frame of caller audio, in arrival order (which is the recording's clock)."""
        if self._file is None:
            return
        self._caller += self._caller_pcm(payload)
        if len(self._caller) >= _FLUSH_SAMPLES * SAMPLE_BYTES:
            self._flush()

    def agent(self, payload: bytes, starts_at: float) -> None:
        """One carrier frame of agent audio (encoded, as sent) that starts playing at monotonic
        ``starts_at``. Where it overlaps audio placed before (only after a barge-in), it wins."""
        if self._file is None:
            return
        pcm = self._agent_pcm(payload)
        if not pcm:
            return
        at = round((starts_at - self._started_at) * RATE)
        if abs(at - self._agent_end) <= _JOIN_SAMPLES:
            at = self._agent_end
        self._agent_end = at + len(pcm) // SAMPLE_BYTES
        offset = at - self._written
        if offset < 0:  # its start is already in the file: keep the part still to come
            pcm = pcm[-offset * SAMPLE_BYTES :]
            offset = 0
        end = offset + len(pcm) // SAMPLE_BYTES
        if not pcm or end > self._max_ahead:
            self.agent_frames_dropped += 1
            return
        buffered = self._agent
        gap = offset * SAMPLE_BYTES - len(buffered)
        if gap > 0:
            buffered += bytes(gap)  # silence between turns
        buffered[offset * SAMPLE_BYTES : end * SAMPLE_BYTES] = pcm

    def cut(self, at: float) -> None:
        """Barge-in at monotonic ``at``: agent audio scheduled from then on was never heard."""
        if self._file is None:
            return
        position = round((at - self._started_at) * RATE)
        del self._agent[max(0, position - self._written) * SAMPLE_BYTES :]
        self._agent_end = min(self._agent_end, position)
        self._agent_pcm.reset()

    def sent(self, frame: bytes, starts_at: float) -> None:
        """``PlayoutTap.sent``: the same as :meth:`agent`."""
        self.agent(frame, starts_at)

    def cleared(self, at: float) -> None:
        """``PlayoutTap.cleared``: the same as :meth:`cut`."""
        self.cut(at)

    def close(self) -> None:
        """Write what is buffered, up to the caller's last sample, and close the file.

        Agent audio beyond the caller's end (what the carrier still held when the caller hung
        up) is never heard, so it is left out. Safe to call twice.
        """
        if self._file is not None:
            self._flush()
        file, self._file = self._file, None
        self._caller.clear()
        self._agent.clear()
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self._failed(exc)

    def _flush(self) -> None:
        """Append the caller's buffered samples with the agent's beside them; update the header."""
        file = self._file
        assert file is not None
        frames = min(len(self._caller) // SAMPLE_BYTES, _MAX_FRAMES - self._written)
        if frames <= 0:
            self._caller.clear()
            return
        data = _interleave(self._caller, self._agent, frames)
        try:
            file.write(data)
            self._written += frames
            # Sizes after the data they cover: a kill between the two leaves a shorter header.
            file.seek(_RIFF_SIZE_AT)
            file.write(_SIZE.pack(_HEADER_BYTES - 8 + self._written * _FRAME_BYTES))
            file.seek(_DATA_SIZE_AT)
            file.write(_SIZE.pack(self._written * _FRAME_BYTES))
            file.seek(0, 2)
            file.flush()  # to the page cache, where a killed process's data survives
        except OSError as exc:
            self._failed(exc)
            return
        del self._caller[: frames * SAMPLE_BYTES]
        del self._agent[: frames * SAMPLE_BYTES]

    def _failed(self, exc: OSError) -> None:
        """Stop recording for good (the file keeps what its header covers); log it once."""
        if self.error is None:
            self.error = exc
            structlog.get_logger("gateway.records").warning(
                "recording.failed", path=str(self._path), error=str(exc)
            )
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # already failing; the first error is the news
                file.close()
        self._caller.clear()
        self._agent.clear()
