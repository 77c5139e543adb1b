"""The console's credentials as plain values: session cookies, the origin check, the login
throttle (the same through the real server: tests/test_e2e_console.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from gateway.web.auth import ConsoleSessions, same_origin
from gateway.web.console import LoginThrottle

NOW = 1_800_000_000.0


def test_a_session_is_valid_until_it_expires_and_only_under_its_token() -> None:
    sessions = ConsoleSessions("token-one-0123456789", ttl_s=60)
    value = sessions.issue(NOW)
    assert sessions.valid(value, NOW + 59)
    assert not sessions.valid(value, NOW + 61)
    assert not ConsoleSessions("token-two-0123456789").valid(value, NOW)
    assert "token-one" not in value
    assert sessions.issue(NOW) != value  # each login its own


def test_a_forged_expiry_breaks_the_signature() -> None:
    sessions = ConsoleSessions("token-one-0123456789", ttl_s=60)
    version, expiry, nonce, signature = sessions.issue(NOW).split(".")
    forged = f"{version}.{int(expiry) + 10**6}.{nonce}.{signature}"
    assert not sessions.valid(forged, NOW)


@given(st.text(max_size=300))
def test_any_cookie_text_is_just_invalid(text: str) -> None:
    assert not ConsoleSessions("token-one-0123456789").valid(text, NOW)


def request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_same_origin_is_the_host_the_request_was_sent_to() -> None:
    assert same_origin(request({"Host": "gw.example.com", "Origin": "https://gw.example.com"}))
    assert same_origin(request({"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080"}))
    assert same_origin(request({"Host": "10.0.0.5:8080", "X-Forwarded-Host": "gw.example.com",
                                "Origin": "https://gw.example.com"}))  # fmt: skip
    assert not same_origin(request({"Host": "gw.example.com", "Origin": "https://evil.example"}))
    assert not same_origin(request({"Host": "gw.example.com", "Origin": "null"}))
    assert not same_origin(request({"Host": "gw.example.com"}))
    assert not same_origin(request({"Host": "gw.example.com:8080",
                                    "Origin": "https://gw.example.com"}))  # fmt: skip


def test_failed_logins_are_counted_per_address_in_a_window() -> None:
    throttle = LoginThrottle(limit=3, window_s=60)
    for _ in range(3):
        assert not throttle.blocked("10.0.0.1", NOW)
        throttle.failed("10.0.0.1", NOW)
    assert throttle.blocked("10.0.0.1", NOW + 1)
    assert not throttle.blocked("10.0.0.2", NOW + 1)
    assert not throttle.blocked("10.0.0.1", NOW + 61)
