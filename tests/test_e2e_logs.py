"""What a call writes to the log: no transcript text unless LOG_TRANSCRIPTS, numbers masked."""

from __future__ import annotations

import logging

import httpx
import pytest

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.logs import PerConnectionLines, _scrub, mask_number
from tests.conftest import StructuredLogs
from tests.harness import running

SAID = "Your balance is four hundred dollars."
HEARD = "What is my balance, please?"
STEPS = [Step(on="caller", hear=HEARD, say=SAID)]


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_transcript_text_reaches_the_log_only_with_log_transcripts(
    structured_logs: StructuredLogs, log_transcripts: bool
) -> None:
    async with running(steps=STEPS, log_transcripts=log_transcripts) as h:
        await h.call([Silence(0.3), Tone(300, 0.5), Silence(3.0)], linger_s=0.5)
    observed = {e["text"] for e in h.named("transcript")}
    assert {SAID, HEARD} <= observed  # observers (the demo, tests) always get the words
    logged = structured_logs.events("transcript")
    assert {e["speaker"] for e in logged} >= {"caller", "agent"}
    if log_transcripts:
        assert {SAID, HEARD} <= {e["text"] for e in logged}
    else:
        assert all("text" not in e for e in logged)
        assert SAID not in structured_logs.text and HEARD not in structured_logs.text


async def test_webhook_logs_show_only_the_last_four_digits_of_a_number(
    structured_logs: StructuredLogs,
) -> None:
    form = {"CallSid": "CA" + "1" * 32, "From": "+14155550123", "To": "+18005550100"}
    async with running() as h, httpx.AsyncClient(base_url=h.gateway.url) as http:
        await http.post("/twilio/voice", data=form)
    (voice,) = structured_logs.events("twilio.voice")
    assert voice["caller"] == "***0123"
    assert "+14155550123" not in structured_logs.text
    assert "4155550123" not in structured_logs.text


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+14155550123", "***0123"), ("4155550123", "***0123"), ("anonymous", "***"),
     ("client:alice", "client:***"), ("sip:bob@pbx.example.com", "sip:***"), ("", ""),
     (None, "")],
)  # fmt: skip
def test_mask_number(number: object, masked: str) -> None:
    assert mask_number(number) == masked


@pytest.mark.parametrize(
    "line",
    [
        '127.0.0.1:5555 - "WebSocket /twilio/stream/v2.Q0ExMQ.1765000120.'
        + "a" * 32 + '" [accepted]',
        "< x-twilio-signature: L/OH5YylLD5NRKLltdqwSvS0BnU=",
        "> Authorization: Bearer KEY0123456789",
        "< x-telnyx-streaming-auth-token: v2.djM6YWJj.1765000120." + "b" * 32,
        "token=v2.Q0ExMQ.1765000120." + "c" * 32 + " rest",
    ],
)  # fmt: skip
def test_secrets_in_library_lines_are_scrubbed(line: str) -> None:
    scrubbed = _scrub(line)
    assert "[redacted]" in scrubbed
    for secret in ("v2.Q0E", "L/OH5", "KEY0123", "v2.djM6", "aaaa", "bbbb", "cccc"):
        assert secret not in scrubbed


def test_per_connection_chatter_is_dropped_unless_debugging() -> None:
    chatter = PerConnectionLines()

    def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, (), None)

    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)
        assert not chatter.filter(record("connection open"))
        assert not chatter.filter(record("connection rejected (%d %s)"))
        assert not chatter.filter(record('%s - "WebSocket %s" [accepted]'))
        assert chatter.filter(record("Uvicorn running on %s"))
        assert chatter.filter(record("connection closed", logging.WARNING))
        root.setLevel(logging.DEBUG)
        assert chatter.filter(record("connection open"))
    finally:
        root.setLevel(before)
