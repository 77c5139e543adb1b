"""Stream tokens and the one-stream-per-call ledger, as plain function calls."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.security import (
    MAX_TOKEN_CHARS,
    StreamGrant,
    StreamLedger,
    StreamTokenError,
    StreamTokens,
)

NOW = 1_765_000_000.0
TOKENS = StreamTokens(b"a-secret-of-sixteen-or-more", ttl_s=120)
CALL = "CA" + "1" * 32
TELNYX_CALL = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"


@pytest.mark.parametrize(("carrier", "call_id"), [("twilio", CALL), ("telnyx", TELNYX_CALL)])
def test_a_token_names_its_call_and_is_safe_in_a_url_path(carrier: str, call_id: str) -> None:
    token = TOKENS.mint(carrier, call_id, NOW)
    assert all(c.isalnum() or c in "._-" for c in token)
    assert len("token") + len(token) < 500  # Twilio's <Parameter> limit
    assert TOKENS.verify(token, carrier, NOW + 119) == StreamGrant(carrier, call_id, int(NOW + 120))
    assert TOKENS.check(token, carrier, call_id, NOW).call_id == call_id


@pytest.mark.parametrize(
    ("token", "carrier", "now", "problem"),
    [
        (TOKENS.mint("twilio", CALL, NOW), "telnyx", NOW, "not signed for this carrier"),
        (TOKENS.mint("twilio", CALL, NOW), "twilio", NOW + 121, "expired"),
        (StreamTokens(b"another-secret-0123456789").mint("twilio", CALL, NOW), "twilio", NOW,
         "not signed"),
        (TOKENS.mint("twilio", CALL, NOW)[:-2] + "xx", "twilio", NOW, "not signed"),
        ("", "twilio", NOW, "no stream token"),
        (None, "twilio", NOW, "no stream token"),
        ("v1.1765000120.abc", "twilio", NOW, "malformed"),
        ("v2.Q0E." + "9" * 5000 + "." + "a" * 32, "twilio", NOW, "malformed"),
        ("v2.Q0E.17650001²0." + "a" * 32, "twilio", NOW, "malformed"),
        ("v2.Q0E.1765000120." + "a" * 32 + "\n", "twilio", NOW, "malformed"),
        ("v2.__8.1765000120." + "a" * 32, "twilio", NOW, "malformed"),  # not UTF-8
        (12345, "twilio", NOW, "malformed"),
    ],
)  # fmt: skip
def test_tokens_that_admit_nothing_say_why(
    token: object, carrier: str, now: float, problem: str
) -> None:
    with pytest.raises(StreamTokenError, match=problem):
        TOKENS.verify(token, carrier, now)


def test_a_token_for_another_call_does_not_admit_this_one() -> None:
    token = TOKENS.mint("twilio", CALL, NOW)
    with pytest.raises(StreamTokenError, match="another call"):
        TOKENS.check(token, "twilio", "CA" + "2" * 32, NOW)


@given(st.one_of(st.text(max_size=2 * MAX_TOKEN_CHARS), st.binary().map(repr)))
def test_no_token_text_raises_anything_but_a_refusal(text: str) -> None:
    with contextlib.suppress(StreamTokenError):
        TOKENS.verify(text, "twilio", NOW)


@given(st.text(min_size=1, max_size=80))
def test_any_call_id_round_trips_through_its_token(call_id: str) -> None:
    token = TOKENS.mint("telnyx", call_id, NOW)
    assert TOKENS.verify(token, "telnyx", NOW).call_id == call_id


def test_the_ledger_admits_one_stream_per_call() -> None:
    ledger = StreamLedger(retention_s=900)
    grant = StreamGrant("twilio", CALL, int(NOW + 120))
    assert ledger.claim(grant, NOW)
    assert not ledger.claim(grant, NOW + 1)  # the same token again
    assert not ledger.claim(StreamGrant("twilio", CALL, int(NOW + 500)), NOW + 380)  # a fresh one
    assert ledger.claim(StreamGrant("telnyx", CALL, int(NOW + 120)), NOW)  # another carrier
    assert ledger.streamed("twilio", CALL, NOW + 2)
    ledger.release(grant)
    assert ledger.claim(grant, NOW + 3)  # passed on unopened: another stream may have it


def test_the_ledger_forgets_after_retention_and_stays_bounded() -> None:
    ledger = StreamLedger(retention_s=900, max_entries=100)
    for i in range(250):
        assert ledger.claim(StreamGrant("twilio", f"CA{i}", 0), NOW + i)
    assert len(ledger) == 100
    assert ledger.streamed("twilio", "CA249", NOW + 250)
    assert not ledger.streamed("twilio", "CA249", NOW + 249 + 901)
    assert len(ledger) == 0
