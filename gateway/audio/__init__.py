"""Audio for the call path: G.711 codecs, a low-delay streaming resampler and the per-call
carrier <-> Gemini Live transcoders. ``analysis`` (numpy measurement helpers for tests, demos and
benchmarks) is deliberately not re-exported: the call path never needs it."""

from gateway.audio.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    pcm16_byteswap,
    ulaw_decode,
    ulaw_encode,
)
from gateway.audio.resample import (
    StreamResampler,
    model_to_telephone,
    model_to_wideband,
    telephone_to_model,
)
from gateway.audio.transcode import (
    FRAME_MS,
    L16_16K,
    MODEL_INPUT_RATE,
    MODEL_OUTPUT_RATE,
    PCMA_8K,
    PCMU_8K,
    AudioFormat,
    Downlink,
    UnsupportedAudioFormat,
    Uplink,
    downlink_for,
    uplink_for,
)

__all__ = [
    "ALAW_SILENCE",
    "FRAME_MS",
    "L16_16K",
    "MODEL_INPUT_RATE",
    "MODEL_OUTPUT_RATE",
    "PCMA_8K",
    "PCMU_8K",
    "ULAW_SILENCE",
    "AudioFormat",
    "Downlink",
    "StreamResampler",
    "UnsupportedAudioFormat",
    "Uplink",
    "alaw_decode",
    "alaw_encode",
    "downlink_for",
    "model_to_telephone",
    "model_to_wideband",
    "pcm16_byteswap",
    "telephone_to_model",
    "ulaw_decode",
    "ulaw_encode",
    "uplink_for",
]
