"""Caller audio lost across connection changes: goAway, drop and handoff (hand-run).

Each scenario places real calls (simulated Twilio caller → gateway → google-genai SDK → Live
simulator) in which the caller says one 2 s sentence while the model connection changes, and
reports how much of that sentence the conversation lost: 2000 ms minus the longest utterance
the simulated model heard on the connection that went on (its voice activity detector measures
what it received), and the caller frames no connection received at all.

    .venv/bin/python benchmarks/continuity.py [runs]

Prints a markdown table. Runs against any revision that has ``tests/harness.py``, so the same
script measures before and after a change (check out the old revision in a worktree).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step, ToolCallSpec
from tests.harness import Harness, agents, running

SENTENCE_S = 2.0
FRAME_BYTES = 640  # 20 ms of PCM16 at 16 kHz
GREETING = agents(agent_triage={"greeting": "Greet the caller."})
TRIAGE = "Role: Triage receptionist"
ADVISOR = "Role: Portfolio advisor"


def _heard_ms(h: Harness, after: int) -> float:
    """The longest caller utterance heard on a connection with index >= ``after``."""
    best = 0.0
    for session in h.sim.sessions.values():
        for entry in session.history:
            if entry.kind == "caller" and entry.connection_index >= after:
                match = re.search(r"\(([\d.]+) s\)", entry.text)
                if match:
                    best = max(best, float(match.group(1)) * 1000)
    return best


def _unreceived_ms(h: Harness, sent_frames: int) -> float:
    received = sum(len(c.audio_in) for c in h.sim.connections) // FRAME_BYTES
    return max(0, sent_frames - received) * 20.0


async def _greeted(h: Harness) -> None:
    await h.sim.wait_for(
        lambda: bool(h.sim.connections) and bool(h.sim.connections[0].sent_times("turnComplete")),
        timeout=5,
    )
    await asyncio.sleep(0.1)


async def _mid_sentence(disrupt: Callable[[Harness], Awaitable[object]]) -> tuple[float, float]:
    """A greeting, then the caller's sentence, disrupted 0.8 s in by ``disrupt``."""
    steps = [Step(on="text", say="hello", seconds=0.4)]
    async with running(steps=steps, graph=GREETING) as h:
        speech = [Silence(1.5), Tone(300, SENTENCE_S), Silence(3.0)]
        call = asyncio.create_task(h.call(speech, linger_s=0.1))
        await _greeted(h)
        await h.sim.wait_for(lambda: h.sim.connections[0].audio_in_seconds >= 2.3, timeout=5)
        await disrupt(h)
        result = await call
    sent = sum(1 for _, m in result.sent if m.get("event") == "media")
    return SENTENCE_S * 1000 - _heard_ms(h, 1), _unreceived_ms(h, sent)


async def goaway_mid_sentence() -> tuple[float, float]:
    return await _mid_sentence(lambda h: h.sim.go_away(time_left="2.5s", close_after=2.5))


async def drop_mid_sentence() -> tuple[float, float]:
    return await _mid_sentence(lambda h: h.sim.close(1011, "internal error"))


async def handoff_while_the_caller_talks() -> tuple[float, float]:
    steps = [
        Step(on="caller", when=TRIAGE, hear="advice please", say="Transferring.", seconds=0.3,
             tool_call=ToolCallSpec("handoff_conversation", {"target": "agent-advisor",
                                    "reason": "advice", "summary": "wants advice"})),
        Step(on="text", when=ADVISOR, say="Advisor here.", seconds=0.3),
    ]  # fmt: skip
    async with running(steps=steps, sim_options={"setup_delay_ms": 300}) as h:
        speech = [Silence(0.4), Tone(300, 0.5), Silence(1.0), Tone(300, SENTENCE_S), Silence(3.0)]
        call = asyncio.create_task(h.call(speech, linger_s=0.1))
        # The sentence starts while the handoff is under way (the tool call comes ~1 s in).
        result = await call
    sent = sum(1 for _, m in result.sent if m.get("event") == "media")
    return SENTENCE_S * 1000 - _heard_ms(h, 1), _unreceived_ms(h, sent)


SCENARIOS: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
    "goAway (2.5 s notice) 0.8 s into the sentence": goaway_mid_sentence,
    "drop (1011) 0.8 s into the sentence": drop_mid_sentence,
    "handoff while the caller starts a sentence": handoff_while_the_caller_talks,
}


async def main(runs: int) -> None:
    print("| scenario | sentence lost, ms (median, max) | frames never received, ms |")
    print("|---|---:|---:|")
    for name, scenario in SCENARIOS.items():
        lost, unreceived = [], []
        for _ in range(runs):
            a, b = await scenario()
            lost.append(a)
            unreceived.append(b)
        print(
            f"| {name} | {statistics.median(lost):.0f}, {max(lost):.0f} "
            f"| {statistics.median(unreceived):.0f} |"
        )


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
