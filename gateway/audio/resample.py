"""Streaming rational polyphase FIR resampler for PCM16LE audio.

Why our own resampler: the call path needs an anti-aliased rate change with a few milliseconds of
delay and a few microseconds of CPU per 20 ms frame. Colleagues measured the alternatives: soxr HQ
streaming holds back 43-73 ms in bursts, ``audioop.ratecv`` has no anti-alias filter (aliases at
0 dBc), libsamplerate sinc_medium costs ~5.8 ms, and resampling each chunk statelessly clicks at
every chunk edge. A stateful, linear-phase Kaiser FIR gives -70 dB or better at 2-4 ms.

Design choices:

* **Kaiser-windowed sinc, designed at construction with numpy only.** The tap count comes from
  Kaiser's formula and is then rounded up so the group delay is a whole number of *output* samples
  (``delay_samples``). That makes the flush length and the measured delay exact integers.
* **Exact arithmetic, hence chunking invariance.** Taps are quantised to multiples of 2**-24. Every
  product of an int16 sample with a tap, and every partial sum, is then an exact multiple of 2**-24
  well below 2**53 / 2**24 in magnitude, so float64 arithmetic is *exact*: the summation order that
  BLAS picks (it changes with matrix shape) cannot change a single bit. This is what makes the
  output bit-identical however the input stream is chunked, and it lets ``process`` recompute a
  partially filled block instead of holding input back. The quantisation is harmless: each tap
  moves by <= 2**-25, so the response moves by <= N * 2**-25 (< -100 dB for 217 taps), far below
  the 72-80 dB stopbands (all quoted responses are of the quantised taps).
* **Block-Toeplitz polyphase matmul.** Input is cut into "superblocks" of ``P = G*M`` samples that
  each yield ``B = G*L`` outputs. Each superblock's outputs are one row of a strided view (J
  superblocks of history and input, rows overlapping by ``(J-1)*P``) times one precomputed
  ``(J*P, B)`` matrix. Per 20 ms frame that is one small ``np.dot`` whose operand copy is at most
  2.4k doubles, instead of a ~30k-double Toeplitz copy (~10 µs) for the naive one-row-per-output
  form. With the int16 conversions a call is six numpy calls (eight while clamping, below):
  5.1 / 6.2 / 6.7 µs per 20 ms frame of speech for the 8->16, 24->8 and 24->16 kHz presets on a
  2-core AMD EPYC VM, of which the matmul is 2-3 µs (``benchmarks/frame_cost.py``; the rest is
  numpy's per-call overhead, which is why the calls are few).
* **Clamping only when it can matter.** An output can leave int16 only if its window holds an
  input louder than ``quiet_peak`` (32767 over the largest sum of |coefficients| of one output,
  -8.6 to -6.7 dBFS for the presets). ``audioop.max`` of each chunk (~0.1 µs) marks how far into
  the buffer a loud chunk reaches, and a call whose windows all start beyond that skips the two
  clamps (~0.9 µs). The output is the same as clamping every time; only the work differs.
* **Compiled where it can be.** Under load the numpy form costs several times what it costs
  alone (25 µs a call at 50 calls against 5-7 µs in a loop: its numpy calls' dispatch code is
  cold by the next frame). ``_polyphase.c`` computes the same sums, in one call with a small
  loop; exactness makes its output bit-identical whatever its vector width and summation order.
  It is built at install when a C compiler is there (the container image requires it); without
  it this module uses the numpy form and says so at start-up (``COMPILED``).
* **Causal, no trimming.** ``process`` emits every output sample whose inputs have arrived (it holds
  back fewer than M input samples), so the output stream is the input delayed by ``delay_ms`` —
  exactly what cross-correlation measures. ``flush`` then pushes zeros through the filter so the
  last ``delay_ms`` of audio comes out too. Over a stream of ``n`` input samples the total output
  is therefore ``ceil(n * L / M) + delay_samples`` — *not* ``round(n * out_rate / in_rate)``:
  trimming the start-up transient to conserve length would only move the same delay from the
  signal into held-back input; the listener hears identical latency either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.audio import g711

try:
    from gateway.audio._polyphase import Kernel as _Kernel
except ImportError:  # installed without a C compiler: the numpy form below does the work
    _Kernel = None  # type: ignore[assignment,misc]

COMPILED: Final = _Kernel is not None
"""True when the compiled FIR (``_polyphase.c``) was built and is used by default."""

Float64Array = npt.NDArray[np.float64]

TAP_FRACTION_BITS: Final = 24
"""Taps are multiples of 2**-TAP_FRACTION_BITS (see the module docstring: exactness)."""

_INT16_MIN: Final = -32768.0
_INT16_MAX: Final = 32767.0
_PCM16: Final = np.dtype("<i2")  # a dtype object: parsing "<i2" costs ~0.3 µs per call
# 0-d arrays, not Python floats: NumPy 2 converts a Python scalar operand on every ufunc call.
_CLAMP_LOW: Final = np.array(_INT16_MIN)
_CLAMP_HIGH: Final = np.array(_INT16_MAX)
_FLOAT64_BYTES: Final = 8

# Spare room (in input samples) allocated beyond the filter history. Compaction then happens
# about once per 4096 input samples and costs one copy of the history.
_BUFFER_SLACK: Final = 4096

# Superblock sizing. Cost per output of the block-Toeplitz form is modelled as
#   J*P * (B + _COPY_WEIGHT) / B
# (J*P*B MACs per row plus a per-row charge for the overlapping-row copy and small-gemm overhead).
# _COPY_WEIGHT is fitted: with 8 the model picks G = 8 / 20 / 10 for 8->16, 24->8 and 24->16 kHz.
# A sweep over every G that divides a 20 ms frame, re-run after the clamp gate, measured those
# within 6% of the fastest choice (5.1 / 6.2 / 6.9 µs against 5.1 / 6.0 / 6.5 µs per frame).
_COPY_WEIGHT: Final = 8.0
_MAX_GROUP: Final = 32

# The polyphase matrix grows with L*M; telephony rates are multiples of 8 kHz (L, M <= 6).
_MAX_FACTOR: Final = 12


def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser window beta for a stop-band attenuation in dB (Kaiser's empirical formula)."""
    if attenuation_db > 50.0:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db >= 21.0:
        return 0.5842 * math.pow(attenuation_db - 21.0, 0.4) + 0.07886 * (attenuation_db - 21.0)
    return 0.0


def kaiser_num_taps(rate_hz: float, transition_hz: float, attenuation_db: float) -> int:
    """Minimum tap count from Kaiser's formula ``N - 1 = (A - 7.95) / (2.285 * dw)``."""
    delta_omega = 2.0 * math.pi * transition_hz / rate_hz
    return math.ceil((attenuation_db - 7.95) / (2.285 * delta_omega)) + 1


def kaiser_lowpass(
    rate_hz: float,
    passband_hz: float,
    stopband_hz: float,
    attenuation_db: float,
    *,
    gain: float = 1.0,
    delay_multiple: int = 1,
) -> Float64Array:
    """Linear-phase low-pass taps (odd length, cutoff midway between the band edges).

    The half-length (group delay in samples) is rounded up to a multiple of ``delay_multiple``;
    the resampler passes its decimation factor so the delay is a whole number of output samples.
    Taps are normalised to sum to ``gain`` (the interpolation factor restores the level lost to
    zero-stuffing).
    """
    if not 0.0 < passband_hz < stopband_hz <= rate_hz / 2.0:
        raise ValueError(
            f"need 0 < passband ({passband_hz} Hz) < stopband ({stopband_hz} Hz) "
            f"<= Nyquist ({rate_hz / 2.0} Hz)"
        )
    min_taps = kaiser_num_taps(rate_hz, stopband_hz - passband_hz, attenuation_db)
    half = math.ceil((min_taps - 1) / 2)
    half = -(-half // delay_multiple) * delay_multiple
    num_taps = 2 * half + 1
    cutoff = (passband_hz + stopband_hz) / 2.0 / rate_hz  # cycles per sample
    n = np.arange(num_taps, dtype=np.float64) - half
    taps = (
        2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(num_taps, kaiser_beta(attenuation_db))
    )
    taps *= gain / taps.sum()
    return taps


@dataclass(frozen=True, slots=True)
class _Design:
    """Everything precomputed for one (rates, filter) combination; shared read-only."""

    up: int  # L
    down: int  # M
    taps: Float64Array  # quantised prototype filter at rate L * in_rate, sum == L
    delay_samples: int  # group delay in output samples
    group: int  # G: M-sample input blocks per superblock
    span: int  # J: superblocks in one window (J - 1 of them history)
    matrix: Float64Array  # (J * G * M, G * L) block-Toeplitz polyphase coefficients
    quiet_peak: int  # inputs no louder than this cannot drive an output beyond int16


def _blocks_spanned(num_taps: int, up: int, down: int) -> int:
    """K: how many M-sample input blocks one output block depends on."""
    return (num_taps - 1 + (down - 1) * up) // (down * up) + 1


def _choose_group(blocks: int, up: int, frame_blocks: int) -> int:
    """Pick G (input blocks per superblock) minimising the estimated cost per output sample.

    Only G dividing the number of blocks in a 20 ms frame are considered, so steady 20 ms frames
    never leave a partial superblock to recompute.
    """
    best_group, best_cost = 1, math.inf
    for group in range(1, _MAX_GROUP + 1):
        if frame_blocks % group:
            continue
        span = -(-(blocks - 1) // group) + 1
        width = span * group  # in blocks; the block size M is common to all candidates
        cost = width * (group * up + _COPY_WEIGHT) / (group * up)
        if cost < best_cost:
            best_group, best_cost = group, cost
    return best_group


def _polyphase_matrix(taps: Float64Array, up: int, down: int, group: int) -> Float64Array:
    """Block-Toeplitz coefficients: ``window_row @ matrix`` gives one superblock's outputs.

    Output ``m = b*L + r`` (input block b, phase r) is ``sum_i taps[m*M - i*L] * x[i]``: the
    prototype filter applied to the zero-stuffed input at the high rate L*in_rate. The window row
    holds input samples ``x[(f-J+1)*P : (f+1)*P]`` for superblock ``f``, oldest first.
    """
    num_taps = taps.size
    span = -(-(_blocks_spanned(num_taps, up, down) - 1) // group) + 1
    width = span * group * down
    pos = np.arange(width)[:, None]  # window position, 0 = oldest sample
    col = np.arange(group * up)[None, :]  # output within the superblock
    # Window position -> input index relative to the superblock's first input sample.
    rel_input = pos - (span - 1) * group * down
    # Output col -> high-rate time relative to the same origin; tap index = time - input*L.
    tap = (col // up) * down * up + (col % up) * down - rel_input * up
    valid = (tap >= 0) & (tap < num_taps)
    matrix = np.where(valid, taps[np.clip(tap, 0, num_taps - 1)], 0.0)
    return np.ascontiguousarray(matrix, dtype=np.float64)


@lru_cache(maxsize=32)
def _design(
    in_rate: int, out_rate: int, passband_hz: float, stopband_hz: float, attenuation_db: float
) -> _Design:
    ratio = math.gcd(in_rate, out_rate)
    up, down = out_rate // ratio, in_rate // ratio
    taps = kaiser_lowpass(
        float(in_rate * up),
        passband_hz,
        stopband_hz,
        attenuation_db,
        gain=float(up),
        delay_multiple=down,
    )
    scale = float(2**TAP_FRACTION_BITS)
    taps = np.round(taps * scale) / scale
    frame_blocks = in_rate // 50 // down if in_rate % (50 * down) == 0 else 1
    group = _choose_group(_blocks_spanned(taps.size, up, down), up, frame_blocks)
    matrix = _polyphase_matrix(taps, up, down, group)
    # |output| <= peak * (largest sum of |coefficients| over one output); exact in float64.
    gain = float(np.abs(matrix).sum(axis=0).max())
    quiet_peak = int(_INT16_MAX // gain)
    while quiet_peak * gain > _INT16_MAX:  # guard against the division rounding up
        quiet_peak -= 1
    taps.setflags(write=False)
    matrix.setflags(write=False)
    return _Design(
        up=up,
        down=down,
        taps=taps,
        delay_samples=(taps.size - 1) // 2 // down,
        group=group,
        span=matrix.shape[0] // (group * down),
        matrix=matrix,
        quiet_peak=quiet_peak,
    )


class StreamResampler:
    """Stateful PCM16LE resampler: any chunking in, bit-identical output out.

    ``process`` accepts any byte count (a dangling odd byte waits for its partner) and returns
    every output sample that the input so far determines. ``flush`` ends a stream and ``reset``
    forgets it (barge-in: an old response's tail must never leak into the next one).
    """

    __slots__ = (
        "_base",
        "_block",
        "_buf",
        "_design",
        "_done",
        "_down",
        "_fill",
        "_history",
        "_in_rate",
        "_kernel",
        "_loud_end",
        "_matrix",
        "_odd",
        "_out_rate",
        "_quiet_peak",
        "_samples_in",
        "_samples_out",
        "_up",
        "_windows",
    )

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        passband_hz: float,
        stopband_hz: float,
        attenuation_db: float,
        compiled: bool | None = None,
    ) -> None:
        """``compiled``: None uses the compiled FIR when it was built, False the numpy form,
        True requires the compiled one (both give the same bytes; tests compare them)."""
        if compiled and _Kernel is None:
            raise RuntimeError("the compiled resampler (gateway/audio/_polyphase.c) is not built")
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        nyquist = min(in_rate, out_rate) / 2.0
        if passband_hz >= nyquist:
            raise ValueError(
                f"passband {passband_hz} Hz must lie below the lower Nyquist frequency {nyquist} Hz"
            )
        common = math.gcd(in_rate, out_rate)
        if max(in_rate, out_rate) // common > _MAX_FACTOR:
            raise ValueError(
                f"{in_rate} -> {out_rate} Hz reduces to {out_rate // common}/{in_rate // common}; "
                f"up and down factors above {_MAX_FACTOR} are not supported"
            )
        self._in_rate = in_rate
        self._out_rate = out_rate
        design = _design(in_rate, out_rate, passband_hz, stopband_hz, attenuation_db)
        self._design = design
        # Hot-path copies of design fields (one attribute lookup each in ``process``).
        self._up = design.up
        self._down = design.down
        self._matrix = design.matrix
        self._quiet_peak = design.quiet_peak
        block = design.group * design.down
        self._block = block
        self._history = (design.span - 1) * block
        self._kernel = (
            _Kernel(design.taps.tobytes(), design.up, design.down)
            if _Kernel is not None and compiled is not False
            else None
        )
        self._buf: Float64Array = np.zeros(0)
        self._windows: Float64Array = np.zeros((0, 0))
        if self._kernel is None:  # the kernel keeps its own samples
            self._allocate(self._history + _BUFFER_SLACK + block)
        self._base = 0  # buffer index where the current superblock's window starts
        self._fill = self._history  # buffer index one past the last input sample
        self._done = 0  # outputs of the current (partial) superblock already returned
        self._loud_end = 0  # buffer index one past the last chunk louder than quiet_peak
        self._odd = b""
        self._samples_in = 0
        self._samples_out = 0

    @property
    def compiled(self) -> bool:
        """Whether this instance runs the compiled FIR."""
        return self._kernel is not None

    def coded_step(
        self, table: bytes, threshold: int
    ) -> Callable[[bytes], tuple[bytes, bool]] | None:
        """One C call per chunk of 8-bit codes (G.711): each decoded through ``table`` (256
        PCM16LE samples), then :meth:`process`, then whether the output's RMS
        (``audioop.rms``) reaches ``threshold``; None unless this instance is compiled.

        A ``partial`` of the kernel's method, so a caller frame's decode, resampling and
        voice check cost one call with no Python frame (four before, each reached through
        Python: at 50 calls every such hop costs several times its hot-loop figure).
        """
        if self._kernel is None:
            return None
        return partial(self._kernel.process_coded, table, threshold)

    def encoded_step(self, table: bytes) -> Callable[[bytes], bytes] | None:
        """One C call per chunk: :meth:`process`, then each output sample encoded through
        ``table`` (16384 codes, indexed by the sample's top 14 bits: G.711 encodes no finer);
        None unless this instance is compiled. The downlink's :meth:`coded_step`."""
        if self._kernel is None:
            return None
        return partial(self._kernel.process_encoded, table)

    @property
    def in_rate(self) -> int:
        return self._in_rate

    @property
    def out_rate(self) -> int:
        return self._out_rate

    @property
    def up(self) -> int:
        """Interpolation factor L of the reduced ratio L/M."""
        return self._design.up

    @property
    def down(self) -> int:
        """Decimation factor M of the reduced ratio L/M."""
        return self._design.down

    @property
    def taps(self) -> Float64Array:
        """Quantised prototype filter at ``in_rate * up`` Hz (read-only; sums to ``up``)."""
        return self._design.taps

    @property
    def quiet_peak(self) -> int:
        """Largest input magnitude that cannot drive any output beyond int16 (no clamping).

        The bound is the input peak times the largest sum of absolute coefficients over one
        output (2.15-2.69 for the presets, so 12170-15237: -8.6 to -6.7 dBFS).
        """
        return self._design.quiet_peak

    @property
    def delay_samples(self) -> int:
        """Algorithmic group delay in output samples (an exact integer by construction)."""
        return self._design.delay_samples

    @property
    def delay_ms(self) -> float:
        """Algorithmic group delay in milliseconds."""
        return 1000.0 * self._design.delay_samples / self._out_rate

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate the sample buffer and the overlapping-window view over it."""
        design = self._design
        block = design.group * design.down
        width = design.span * block
        old = self._buf
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._buf[: old.size] = old
        rows = (capacity - width) // block + 1
        self._windows = np.ndarray(
            (rows, width),
            dtype=np.float64,
            buffer=self._buf,
            strides=(block * _FLOAT64_BYTES, _FLOAT64_BYTES),
        )

    def _make_room(self, incoming: int) -> None:
        """Move the live region to the buffer start, growing the buffer if that is not enough."""
        buf = self._buf
        live = self._fill - self._base
        buf[:live] = buf[self._base : self._fill]
        self._loud_end -= self._base
        self._base, self._fill = 0, live
        needed = live + incoming + self._block
        if needed > buf.size:
            self._allocate(max(needed, 2 * buf.size))

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk of PCM16LE; returns PCM16LE (possibly empty)."""
        kernel = self._kernel
        if kernel is not None:
            return kernel.process(pcm)
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        count = len(pcm) >> 1
        if len(pcm) & 1:
            self._odd = pcm[-1:]
        if count == 0:
            return b""
        block = self._block
        fill = self._fill
        if fill + count + block > self._buf.size:
            self._make_room(count)
            fill = self._fill
        self._buf[fill : fill + count] = np.frombuffer(pcm, _PCM16, count)
        if g711.pcm16_peak(pcm) > self._quiet_peak:
            self._loud_end = fill + count
        fill += count
        self._fill = fill
        self._samples_in += count
        # Samples at or after the first superblock that has not been completely output yet.
        base = self._base
        avail = fill - base - self._history
        done = self._done
        ready = avail // self._down * self._up - done
        if ready <= 0:
            return b""
        row = base // block
        # The last row may run past the data into stale (finite) samples. By causality those only
        # feed outputs of incomplete blocks, which are not returned now and are recomputed
        # bit-identically (exact arithmetic) once their input has arrived.
        out: Float64Array = np.dot(self._windows[row : row - (-avail // block)], self._matrix)
        out = out.ravel()[done : done + ready]
        np.rint(out, out=out)
        # Every returned output is made of samples at or after ``base``; unless one of them came
        # in a loud chunk, no output can leave the int16 range and the clamps are skipped.
        if self._loud_end > base:
            np.minimum(out, _CLAMP_HIGH, out=out)
            np.maximum(out, _CLAMP_LOW, out=out)
        partial = avail % block
        self._base = fill - self._history - partial
        self._done = partial // self._down * self._up
        self._samples_out += ready
        return out.astype(_PCM16).tobytes()

    def flush(self) -> bytes:
        """Return the tail still inside the filter, then reset.

        Zeros are pushed through the group delay so the output of the whole stream totals exactly
        ``ceil(n * up / down) + delay_samples`` samples for ``n`` input samples (``n`` counts whole
        samples; a dangling odd byte is dropped). A stream that received no samples flushes to
        ``b""``.
        """
        kernel = self._kernel
        if kernel is not None:
            kernel.drop_odd()
            samples_in, samples_out = kernel.samples_in, kernel.samples_out
        else:
            self._odd = b""
            samples_in, samples_out = self._samples_in, self._samples_out
        tail = b""
        if samples_in:
            design = self._design
            target = -(-samples_in * design.up // design.down) + design.delay_samples
            missing = target - samples_out
            zeros = design.down * -(-target // design.up) - samples_in
            if missing > 0:
                tail = self.process(bytes(2 * zeros))[: 2 * missing]
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget all input: the next ``process`` behaves exactly like a fresh instance's."""
        if self._kernel is not None:
            self._kernel.reset()
            return
        self._buf[: self._history] = 0.0  # the filter starts from silence
        self._base = 0
        self._fill = self._history
        self._done = 0
        self._loud_end = 0
        self._odd = b""
        self._samples_in = 0
        self._samples_out = 0


def telephone_to_model(*, compiled: bool | None = None) -> StreamResampler:
    """8 kHz telephone audio -> 16 kHz model input.

    Passband 3.6 kHz, stopband 4.4 kHz, 80 dB: the images ``8 kHz - f`` of everything up to
    3.6 kHz fall in the stopband. A half-band design (3.4/4.6 kHz, 2.1 ms) was 1 ms shorter but
    rolled off -6 dB at 4 kHz, and benchmarks/audio_quality.py showed it audibly less
    transparent than soxr on full-band G.711 speech (PESQ 4.03 vs 4.58 against an ideal
    resample); this design closes most of that gap for 3.2 ms (51 samples at 16 kHz).
    """
    return StreamResampler(
        8000, 16000, passband_hz=3600, stopband_hz=4400, attenuation_db=80, compiled=compiled
    )


def telephone_to_model_24k(*, compiled: bool | None = None) -> StreamResampler:
    """8 kHz telephone audio -> 24 kHz PCM (a model that takes neither G.711 nor 16 kHz).

    The same response as :func:`telephone_to_model`: passband 3.6 kHz, stopband 4.4 kHz, 80 dB.
    """
    return StreamResampler(
        8000, 24000, passband_hz=3600, stopband_hz=4400, attenuation_db=80, compiled=compiled
    )


def wideband_to_model_24k(*, compiled: bool | None = None) -> StreamResampler:
    """16 kHz wideband audio (G.722, L16, the browser) -> 24 kHz PCM for OpenAI Realtime.

    Interpolation by 3/2: passband 7 kHz, stopband from the 8 kHz input Nyquist, where the
    images of the 2x upsampling start (the mirror of :func:`model_to_wideband`).
    """
    return StreamResampler(
        16000, 24000, passband_hz=7000, stopband_hz=8000, attenuation_db=72, compiled=compiled
    )


def model_to_telephone(*, compiled: bool | None = None) -> StreamResampler:
    """24 kHz model output -> 8 kHz telephone audio.

    Every tone at or above the 4 kHz output Nyquist must alias >= 60 dB down, so the stopband
    starts at 4.0 kHz and the 600 Hz transition sets the length: 181 taps (beta 6.98) for a 72 dB
    design. Measured: delay 3.75 ms (30 samples at 8 kHz; 70/75/80 dB designs would give
    3.625/4.0/4.25 ms), passband ripple +-0.003 dB, stopband <= -71.3 dB, worst tone alias
    4.1k->3.9k at -73.5 dB; 4.5k, 9k and 11k tones alias below the int16 floor.
    """
    return StreamResampler(
        24000, 8000, passband_hz=3400, stopband_hz=4000, attenuation_db=72, compiled=compiled
    )


def model_to_wideband(*, compiled: bool | None = None) -> StreamResampler:
    """24 kHz model output -> 16 kHz wideband carrier audio (L16/16 kHz; L=2, M=3).

    Passband 7 kHz, stopband at the 8 kHz output Nyquist so nothing aliases; the same filter
    removes the 2x interpolation images (>= 12 kHz). 217 taps at 48 kHz (beta 6.98). Measured:
    delay 2.25 ms (36 samples at 16 kHz), ripple +-0.003 dB, stopband <= -71.4 dB, worst tone
    alias 8.2k->7.8k at -75.5 dB.
    """
    return StreamResampler(
        24000, 16000, passband_hz=7000, stopband_hz=8000, attenuation_db=72, compiled=compiled
    )


def wideband_to_telephone(*, compiled: bool | None = None) -> StreamResampler:
    """16 kHz wideband carrier audio -> 8 kHz (L=1, M=2), for the 8 kHz call recording.

    The same response as ``model_to_telephone`` (3.4 kHz passband, stopband from the 4 kHz output
    Nyquist, 72 dB), so a wideband call's recording sounds like a narrowband one's rather than
    carrying 4-8 kHz folded back into the voice band as ``audioop.ratecv`` would.
    """
    return StreamResampler(
        16000, 8000, passband_hz=3400, stopband_hz=4000, attenuation_db=72, compiled=compiled
    )
