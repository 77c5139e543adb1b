"""Call recording: the WAV a call leaves, its timeline, barge-in cuts, and the playout's tap.

Most tests feed plain carrier bytes with made-up monotonic times (``started_at`` is an arbitrary
number, not the clock), so where audio lands is exact, not a matter of timing. The playout tests
use the real clock but only assert orderings and spacings the playout computes, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.aio import cancel_and_wait
from gateway.audio import g711
from gateway.audio.analysis import dominant_frequency, sine_pcm16, tone_dbfs
from gateway.audio.g722 import G722Encoder
from gateway.audio.transcode import G722_16K, L16_16K, PCMA_8K, PCMU_8K, AudioFormat
from gateway.call.playout import Playout, PlayoutTap
from gateway.records.recording import CallRecording, recording_path
from tests.servers import until
from tests.test_playout import Recorder, _codec

ROOT = Path(__file__).resolve().parent.parent
T0 = 1000.0  # the call's start on a made-up monotonic clock
L16_LITTLE = AudioFormat("L16", 16000, "little")
Stereo = npt.NDArray[np.int16]


def encoder(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """PCM16LE at the format's rate -> carrier bytes, as the gateway's downlink makes them."""
    if fmt.encoding == "PCMU":
        return g711.ulaw_encode
    if fmt.encoding == "PCMA":
        return g711.alaw_encode
    if fmt.encoding == "G722":
        return G722Encoder().encode
    return g711.pcm16_byteswap if fmt.byteorder == "big" else bytes


def frames_of(fmt: AudioFormat, pcm: bytes) -> list[bytes]:
    data = encoder(fmt)(pcm)
    size = fmt.frame_bytes
    return [data[i : i + size] for i in range(0, len(data), size)]


def tone(fmt: AudioFormat, freq: float, seconds: float, dbfs: float = -12.0) -> list[bytes]:
    return frames_of(fmt, sine_pcm16(freq, seconds, fmt.sample_rate, dbfs))


def silence(fmt: AudioFormat, seconds: float) -> list[bytes]:
    return frames_of(fmt, bytes(2 * round(seconds * fmt.sample_rate)))


def new(tmp_path: Path, fmt: AudioFormat = PCMU_8K, call_id: str = "CA123") -> CallRecording:
    return CallRecording.create(
        tmp_path, call_id, caller_format=fmt, agent_format=fmt, started_at=T0
    )


def read(path: Path) -> Stereo:
    """The WAV's samples as (frames, 2), after checking it is what every recording must be."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


# ------------------------------------------------------------------ timeline


def test_caller_audio_goes_left_and_the_right_channel_stays_silent(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for frame in tone(PCMU_8K, 440, 2.0):
        rec.caller(frame)
    rec.close()
    audio = read(rec.path)
    assert len(audio) == 16000
    assert dominant_frequency(audio[:, 0], 8000) == pytest.approx(440, abs=1)
    assert tone_dbfs(audio[:, 0], 8000, 440) == pytest.approx(-12, abs=0.5)
    assert not audio[:, 1].any()


def test_an_agent_frame_lands_where_the_carrier_plays_it(tmp_path: Path) -> None:
    rec = new(tmp_path)
    loud = b"\x80" * 160  # μ-law near full scale: every sample non-zero
    rec.agent(loud, T0 + 0.5)
    rec.agent(loud, T0 + 0.52)
    for frame in silence(PCMU_8K, 1.0):
        rec.caller(frame)
    rec.close()
    agent = np.flatnonzero(read(rec.path)[:, 1])
    assert (agent[0], agent[-1]) == (4000, 4000 + 320 - 1)
    assert len(agent) == 320  # back to back: no gap, no overlap


def test_agent_frames_a_float_rounding_apart_are_joined_without_a_click(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for i in range(10):  # how the playout adds 20 ms steps, then a 1-sample nudge
        rec.agent(b"\x80" * 160, T0 + 0.1 + i * 0.02 + (1 / 8000 if i == 5 else 0.0))
    for frame in silence(PCMU_8K, 1.0):
        rec.caller(frame)
    rec.close()
    agent = np.flatnonzero(read(rec.path)[:, 1])
    assert list(agent) == list(range(800, 800 + 1600))


def test_a_cut_removes_agent_audio_scheduled_after_it_and_keeps_what_came_before(
    tmp_path: Path,
) -> None:
    rec = new(tmp_path)
    caller = silence(PCMU_8K, 2.0)
    for frame in caller[:10]:  # 0.2 s of the caller
        rec.caller(frame)
    for i in range(50):  # a second of agent audio from 0.2 s, sent to the carrier at once
        rec.agent(b"\x80" * 160, T0 + 0.2 + i * 0.02)
    for frame in caller[10:35]:  # ... the caller speaks over it at 0.7 s
        rec.caller(frame)
    rec.cut(T0 + 0.7)
    for i in range(10):  # the agent's next answer, from 1.0 s
        rec.agent(b"\x80" * 160, T0 + 1.0 + i * 0.02)
    for frame in caller[35:]:
        rec.caller(frame)
    rec.close()
    agent = read(rec.path)[:, 1]
    assert agent[1600:5600].all()  # played before the barge-in: kept
    assert not agent[5600:8000].any()  # sent, but cleared before it played: cut
    assert agent[8000:9600].all()
    assert not agent[9600:].any()


def test_after_a_cut_the_agent_decoder_starts_afresh_like_the_encoder(tmp_path: Path) -> None:
    """At a barge-in the bridge restarts its G.722 encoder: the recording must restart its
    decoder (and resampler) too, or the next answer starts with the old turn's state."""
    rec = new(tmp_path, G722_16K)
    for i, frame in enumerate(tone(G722_16K, 700, 1.0, dbfs=-3)):
        rec.agent(frame, T0 + i * 0.02)
    rec.cut(T0 + 0.5)
    answer = tone(G722_16K, 1000, 0.5)  # a fresh encoder, as after the bridge's reset
    for i, frame in enumerate(answer):
        rec.agent(frame, T0 + 0.5 + i * 0.02)
    for frame in silence(G722_16K, 1.5):
        rec.caller(frame)
    rec.close()
    alone = new(tmp_path / "alone", G722_16K)  # the answer recorded on its own
    for i, frame in enumerate(answer):
        alone.agent(frame, T0 + i * 0.02)
    for frame in silence(G722_16K, 0.5):
        alone.caller(frame)
    alone.close()
    assert np.array_equal(read(rec.path)[4000:8000, 1], read(alone.path)[:, 1])


def test_a_cut_after_a_flush_keeps_the_flushed_audio(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for i in range(100):
        rec.agent(b"\x80" * 160, T0 + i * 0.02)
    for frame in silence(PCMU_8K, 1.5):  # the first second is in the file already
        rec.caller(frame)
    rec.cut(T0 + 0.5)  # a cut in the past (clock skew) cannot unwrite it, and must not break
    rec.close()
    agent = read(rec.path)[:, 1]
    assert agent[:8000].all()
    assert not agent[8000:].any()


def test_agent_audio_beyond_the_caller_end_is_left_out(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for i in range(100):
        rec.agent(b"\x80" * 160, T0 + i * 0.02)
    for frame in silence(PCMU_8K, 1.0):
        rec.caller(frame)
    rec.close()  # the caller hung up at 1 s; the carrier's second second never played
    assert read(rec.path)[:, 1].all()
    assert len(read(rec.path)) == 8000


def test_agent_audio_too_far_ahead_is_dropped_not_buffered(tmp_path: Path) -> None:
    rec = CallRecording.create(
        tmp_path, "CA1", caller_format=PCMU_8K, agent_format=PCMU_8K, started_at=T0,
        max_ahead_s=1.0,
    )  # fmt: skip
    rec.agent(b"\x80" * 160, T0 + 0.5)
    rec.agent(b"\x80" * 160, T0 + 3600.0)  # a runaway producer
    assert rec.agent_frames_dropped == 1
    for frame in silence(PCMU_8K, 1.0):
        rec.caller(frame)
    rec.close()
    assert np.count_nonzero(read(rec.path)[:, 1]) == 160


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    "fmt", [PCMU_8K, PCMA_8K, G722_16K, L16_16K, L16_LITTLE], ids=lambda f: str(f)
)
def test_every_carrier_format_records_both_sides_at_their_frequency_and_level(
    tmp_path: Path, fmt: AudioFormat
) -> None:
    rec = new(tmp_path, fmt)
    for i, frame in enumerate(tone(fmt, 1000, 2.0)):
        rec.agent(frame, T0 + i * 0.02)
    for frame in tone(fmt, 440, 2.0):
        rec.caller(frame)
    rec.close()
    audio = read(rec.path)[800:]  # past the resampler's and codec's start-up
    caller, agent = audio[:, 0], audio[:, 1]
    assert dominant_frequency(caller, 8000) == pytest.approx(440, abs=2)
    assert dominant_frequency(agent, 8000) == pytest.approx(1000, abs=2)
    assert tone_dbfs(caller, 8000, 440) == pytest.approx(-12, abs=1)
    assert tone_dbfs(agent, 8000, 1000) == pytest.approx(-12, abs=1)
    assert tone_dbfs(caller, 8000, 1000) < -50  # no crosstalk between the channels
    assert tone_dbfs(agent, 8000, 440) < -50


@pytest.mark.parametrize("fmt", [G722_16K, L16_16K], ids=lambda f: str(f))
def test_wideband_audio_above_4_khz_does_not_fold_into_the_voice_band(
    tmp_path: Path, fmt: AudioFormat
) -> None:
    rec = new(tmp_path, fmt)
    for frame in tone(fmt, 6000, 2.0, dbfs=-6):
        rec.caller(frame)
    rec.close()
    assert tone_dbfs(read(rec.path)[800:, 0], 8000, 2000) < -60  # 6 kHz would alias to 2 kHz


def test_big_endian_l16_split_mid_sample_stays_aligned(tmp_path: Path) -> None:
    rec = new(tmp_path, L16_16K)
    data = b"".join(tone(L16_16K, 440, 1.0))
    for i in range(0, len(data), 641):  # odd-sized payloads: every other one ends mid-sample
        rec.caller(data[i : i + 641])
    rec.close()
    left = read(rec.path)[800:, 0]
    assert tone_dbfs(left, 8000, 440) == pytest.approx(-12, abs=1)


# ------------------------------------------------------------------ the file


@pytest.mark.parametrize(
    "call_id", ["../../etc/passwd", "v3:abc/def", "a\\b", "..", ".hidden", "", "x" * 300]
)
def test_the_file_name_is_safe_whatever_the_call_id(tmp_path: Path, call_id: str) -> None:
    path = recording_path(tmp_path, call_id)
    assert path.parent == tmp_path
    assert path.suffix == ".wav"
    assert path.stem and all(c.isalnum() or c in "_-" for c in path.stem)
    assert len(path.name) < 255
    rec = new(tmp_path, call_id=call_id)
    rec.close()
    assert rec.path == path
    assert path.exists()


def test_an_ordinary_call_id_is_the_file_name(tmp_path: Path) -> None:
    assert recording_path(tmp_path, "CA0123abcd").name == "CA0123abcd.wav"
    assert recording_path(tmp_path, "v3:AbC-d_e").name == "v3_AbC-d_e.wav"


def test_a_second_recording_of_a_call_does_not_overwrite_the_first(tmp_path: Path) -> None:
    first = new(tmp_path)
    for frame in tone(PCMU_8K, 440, 1.0):
        first.caller(frame)
    first.close()
    second = new(tmp_path)
    second.close()
    assert second.path == tmp_path / "CA123-2.wav"
    assert len(read(first.path)) == 8000


def test_the_directory_is_created(tmp_path: Path) -> None:
    rec = new(tmp_path / "a" / "b")
    rec.close()
    assert rec.path.parent == tmp_path / "a" / "b"


def test_header_sizes_match_the_file_after_close(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for frame in tone(PCMU_8K, 440, 2.5):  # two flushes and a partial second
        rec.caller(frame)
    rec.close()
    rec.close()  # twice is harmless
    raw = rec.path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt " and raw[36:40] == b"data"
    assert int.from_bytes(raw[4:8], "little") == len(raw) - 8
    assert int.from_bytes(raw[40:44], "little") == len(raw) - 44 == 20000 * 4
    assert rec.frames_written == 20000


def test_the_header_covers_each_flush_while_the_call_goes_on(tmp_path: Path) -> None:
    rec = new(tmp_path)
    frames = tone(PCMU_8K, 440, 1.5)
    for frame in frames:
        rec.caller(frame)
    assert len(read(rec.path)) == 8000  # readable mid-call, up to the last flush
    rec.close()
    assert len(read(rec.path)) == 12000


def test_after_close_feeds_are_ignored(tmp_path: Path) -> None:
    rec = new(tmp_path)
    rec.close()
    rec.caller(b"\xff" * 160)
    rec.agent(b"\xff" * 160, T0)
    rec.cut(T0)
    assert len(read(rec.path)) == 0


def test_a_write_error_stops_the_recording_but_not_the_call(tmp_path: Path) -> None:
    rec = new(tmp_path)
    for frame in tone(PCMU_8K, 440, 1.0):
        rec.caller(frame)
    os.close(rec._file.fileno())  # type: ignore[union-attr]  # the disk goes away
    for frame in tone(PCMU_8K, 440, 1.0):
        rec.caller(frame)  # must not raise into the caller's loop
    rec.agent(b"\x80" * 160, T0 + 1.5)
    rec.close()
    assert isinstance(rec.error, OSError)
    assert len(read(rec.path)) == 8000  # what was written before stays readable


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("caller"), st.binary(max_size=400)),
        st.tuples(
            st.just("agent"), st.binary(max_size=400), st.floats(-5.0, 30.0, allow_nan=False)
        ),
        st.tuples(st.just("cut"), st.floats(-5.0, 30.0, allow_nan=False)),
    ),
    max_size=120,
)


def _caller_samples(fmt: AudioFormat, caller_bytes: int) -> int:
    """8 kHz samples that ``caller_bytes`` of carrier audio make."""
    if fmt.encoding == "L16":
        return caller_bytes // 2 // 2
    return caller_bytes  # one per G.711 byte; G.722: two 16 kHz samples per byte, halved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from([PCMU_8K, PCMA_8K, G722_16K, L16_16K, L16_LITTLE]), ops=_ops)
def test_any_feed_leaves_a_valid_wav_as_long_as_the_callers_audio(
    fmt: AudioFormat, ops: list[tuple[object, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        rec = new(Path(directory), fmt)
        caller_bytes = 0
        for op in ops:
            if op[0] == "caller":
                payload = op[1]
                assert isinstance(payload, bytes)
                caller_bytes += len(payload)
                rec.caller(payload * 20)  # long enough to cross flushes now and then
                caller_bytes += len(payload) * 19
            elif op[0] == "agent":
                payload, offset = op[1], op[2]
                assert isinstance(payload, bytes) and isinstance(offset, float)
                rec.agent(payload, T0 + offset)
            else:
                offset = op[1]
                assert isinstance(offset, float)
                rec.cut(T0 + offset)
        rec.close()
        expected = _caller_samples(fmt, caller_bytes)
        assert len(read(rec.path)) == expected
        assert rec.path.stat().st_size == 44 + 4 * expected


# ------------------------------------------------------------------ a killed process

_KILLED_WRITER = """
import sys, time
from pathlib import Path
from gateway.audio import g711
from gateway.audio.analysis import sine_pcm16
from gateway.audio.transcode import PCMU_8K
from gateway.records.recording import CallRecording

rec = CallRecording.create(
    Path(sys.argv[1]), "CAkilled", caller_format=PCMU_8K, agent_format=PCMU_8K, started_at=0.0
)
caller = g711.ulaw_encode(sine_pcm16(440, 3.0, 8000, -12))
agent = g711.ulaw_encode(sine_pcm16(1000, 3.0, 8000, -12))
for i in range(0, len(caller), 160):
    rec.agent(agent[i : i + 160], i / 8000)
    rec.caller(caller[i : i + 160])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_killed_mid_call_leaves_a_readable_wav(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    audio = read(tmp_path / "CAkilled.wav")
    assert len(audio) >= 16000  # all but the last second at most
    assert tone_dbfs(audio[:16000, 0], 8000, 440) == pytest.approx(-12, abs=1)
    assert tone_dbfs(audio[:16000, 1], 8000, 1000) == pytest.approx(-12, abs=1)


# ------------------------------------------------------------------ the playout's tap


class Tap:
    def __init__(self) -> None:
        self.sent_frames: list[tuple[bytes, float]] = []
        self.cleared_at: list[float] = []

    def sent(self, frame: bytes, starts_at: float) -> None:
        self.sent_frames.append((frame, starts_at))

    def cleared(self, at: float) -> None:
        self.cleared_at.append(at)


async def test_the_tap_sees_each_frame_sent_with_when_it_plays_20_ms_apart() -> None:
    tap = Tap()
    rec = Recorder()
    playout = Playout(_codec(), rec.send, lead_ms=1000, tap=tap)
    runner = asyncio.create_task(playout.run())
    try:
        before = time.monotonic()
        frames = [bytes([i]) * 160 for i in range(12)]
        for frame in frames:
            playout.enqueue(frame)
        await until(lambda: rec.frames() == 12)
        after = time.monotonic()
    finally:
        await cancel_and_wait(runner)
    assert [frame for frame, _ in tap.sent_frames] == frames  # in order, as sent
    starts = [at for _, at in tap.sent_frames]
    assert before <= starts[0] <= after
    assert np.diff(starts) == pytest.approx([0.02] * 11)  # back to back, whatever the batching


async def test_interrupt_tells_the_tap_and_the_next_frame_plays_after_it() -> None:
    tap = Tap()
    rec = Recorder()
    playout = Playout(_codec(), rec.send, lead_ms=1000, tap=tap)
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(10):
            playout.enqueue(b"\x01" * 160)
        await until(lambda: rec.frames() == 10)
        before = time.monotonic()
        playout.interrupt()
        after = time.monotonic()
        playout.enqueue(b"\x02" * 160)
        await until(lambda: rec.frames() == 11)
    finally:
        await cancel_and_wait(runner)
    assert len(tap.cleared_at) == 1
    assert before <= tap.cleared_at[0] <= after
    # The carrier was told to drop the lead: the new frame plays now, not after the old audio.
    assert tap.cleared_at[0] <= tap.sent_frames[-1][1] < tap.sent_frames[-2][1]


async def test_a_recording_is_a_playout_tap_and_cuts_what_a_barge_in_cleared(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    recording = CallRecording.create(
        tmp_path, "CAtap", caller_format=PCMU_8K, agent_format=PCMU_8K, started_at=started
    )
    tap: PlayoutTap = recording
    rec = Recorder()
    playout = Playout(_codec(), rec.send, lead_ms=2000, tap=tap)
    runner = asyncio.create_task(playout.run())
    try:
        for _ in range(50):  # a second of agent audio, all sent to the carrier at once
            playout.enqueue(b"\x80" * 160)
        await until(lambda: rec.frames() == 50)
        playout.interrupt()  # the caller barges in before most of it played
        cut_at = time.monotonic()
    finally:
        await cancel_and_wait(runner)
    for frame in silence(PCMU_8K, 3.0):
        recording.caller(frame)
    recording.close()
    agent = np.flatnonzero(read(recording.path)[:, 1])
    assert len(agent) > 0
    assert agent[-1] - agent[0] + 1 == len(agent)  # one unbroken stretch, from the first frame
    assert agent[-1] < round((cut_at - started) * 8000)  # nothing after the barge-in
    assert len(agent) < 50 * 160  # most of the second was cleared, never heard
