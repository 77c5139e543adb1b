"""Token usage through the whole gateway: each model turn's ``usageMetadata`` becomes one
``live.usage`` call event with that turn's numbers, as the Live simulator sent them."""

from __future__ import annotations

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from tests.harness import running


async def test_each_turn_of_a_call_reports_its_usage() -> None:
    steps = [
        Step(on="caller", say="One moment.", seconds=0.5),
        Step(on="caller", say="Here is what I found for you.", seconds=1.0),
    ]
    speech = [Silence(0.5), Tone(300, 0.5), Silence(2.0), Tone(300, 0.5), Silence(2.5)]
    async with running(steps=steps) as h:
        result = await h.call(speech, linger_s=0.5)
        (record,) = h.sim.connections
        sent_totals = [
            int(summary.rsplit("=", 1)[1])
            for summary in record.sent_summaries()
            if summary.startswith("usageMetadata")
        ]
    assert result.violations == []
    usage = h.named("live.usage")
    assert [u["total_tokens"] for u in usage] == sent_totals and len(usage) == 2
    # This turn's numbers, not a running total: 32 tokens a second of the agent's audio.
    assert [u["output_tokens"] for u in usage] == [16, 32]
    # The second turn's input is the whole context so far: more than the first's.
    assert usage[1]["input_tokens"] > usage[0]["input_tokens"] > 0
    for u in usage:
        assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
        assert u["agent"] == "agent-triage"
