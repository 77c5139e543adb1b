"""The frame header reading both of the gateway's frame cutters share, against websockets'."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.utils import apply_mask

from gateway.wsparser import frame_bounds

_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([125, 126, 127, 65535, 65536, 70000]).map(b"p".__mul__),
)


@given(payload=_payloads, masked=st.booleans(), lead=st.binary(max_size=5))
def test_the_bounds_of_any_frame_websockets_writes(
    payload: bytes, masked: bool, lead: bytes
) -> None:
    frame = Frame(Opcode.BINARY, payload).serialize(mask=masked)
    data = lead + frame
    bounds = frame_bounds(data, len(lead), masked=masked, limit=None)
    assert bounds is not None
    start, end = bounds
    assert end == len(data)
    body = data[start:end]
    assert (apply_mask(body, data[start - 4 : start]) if masked else body) == payload
    header_cuts = range(len(lead), min(len(data), start + 1))  # each byte of the header
    body_cuts = range(start, len(data), max(1, (len(data) - start) // 40))
    for cut in {*header_cuts, *body_cuts}:  # cut off anywhere: the end lies past the data
        cut_bounds = frame_bounds(data[:cut], len(lead), masked=masked, limit=None)
        assert cut_bounds is not None and cut_bounds[1] > cut
    assert frame_bounds(data, len(lead), masked=not masked, limit=None) is None
    if payload:
        assert frame_bounds(data, len(lead), masked=masked, limit=len(payload) - 1) is None
