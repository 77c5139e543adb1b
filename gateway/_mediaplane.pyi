"""Types of the compiled media plane (gateway/_mediaplane.c); see gateway/mediaplane.py."""

from collections.abc import Callable
from typing import Any

def carrier_media(raw: bytes, stream_key: bytes, stream_id: bytes, /) -> bytes | None: ...
def base64_frame(
    first: int, prefix: bytes, data: bytes, suffix: bytes, mask: bytes | None, urlsafe: bool, /
) -> bytes: ...
def model_audio(raw: bytes | str, /) -> bytes | None: ...
def data_frame(
    data: bytes, at: int, limit: int, masked: bool, /
) -> tuple[int, bytes, int] | int | None: ...

_Step = Callable[[bytes], tuple[bytes, bool]]
#: (budget's admitted_s, the uplink's step, generation, next index, the model socket's target)
_Reloaded = tuple[float, _Step, int, int, tuple[Any, ...]]

class CallerLane:
    """A call's caller frames in one C call each (gateway/call/lane.py)."""

    waiting: bool
    def __init__(
        self,
        fallback: Callable[[bytes], bool],
        reload: Callable[[], _Reloaded | None],
        bridge_sink: Callable[[int, float, float, float], None],
        stream_key: bytes,
        stream_id: bytes,
        max_message: int,
        bytes_per_second: float,
        started_at: float,
        allowance_s: float,
    ) -> None: ...
    def take(self, raw: bytes, /) -> bool: ...
    def settle(self) -> None: ...
    def close(self) -> None: ...
    @property
    def pending(self) -> int: ...
    @property
    def ready(self) -> bool: ...
