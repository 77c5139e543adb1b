"""The gateway's own transcript and the prompts built from it around a handoff."""

from __future__ import annotations

import yaml

from gateway.agents import parse_agents
from gateway.call.handoff import history_turns, takeover_prompt
from gateway.call.transcript import Transcript
from tests.test_agents import BASE


def test_pieces_assemble_into_alternating_utterances() -> None:
    t = Transcript()
    assert t.agent_piece("Hel", "a") is None
    assert t.agent_piece("lo, how can ", "a") is None
    t.agent_piece("I help?", "a")
    finished = t.caller_piece("I need ", "a")
    assert finished is not None
    assert (finished.speaker, finished.text) == ("agent", "Hello, how can I help?")
    t.caller_piece("advice", "a")
    (caller,) = t.finish_all()
    assert (caller.speaker, caller.text) == ("caller", "I need advice")


def test_since_handle_is_what_a_resumed_session_has_not_heard() -> None:
    t = Transcript()
    t.agent_piece("Hello.", "a")
    t.finish_all()
    t.mark_handle()
    t.caller_piece("I want to invest.", "a")
    t.agent_piece("Transferring you.", "a")
    t.finish_all()
    assert [e.text for e in t.since_handle()] == ["I want to invest.", "Transferring you."]


def test_takeover_prompt_names_role_reason_summary_and_what_the_caller_said() -> None:
    graph = parse_agents(yaml.safe_dump(BASE))
    t = Transcript()
    t.caller_piece("What about index funds?", "agent-triage")
    t.finish_all()
    prompt = takeover_prompt(
        graph.agent("agent-advisor"),
        reason="wants investment advice",
        summary="Caller has savings to invest",
        since=t.since_handle(),
    )
    assert "You are now the Portfolio advisor" in prompt
    assert "Reason for the transfer: wants investment advice" in prompt
    assert "summary: Caller has savings to invest" in prompt
    assert '"What about index funds?"' in prompt
    assert "introduce yourself" in prompt


def test_history_turns_alternate_and_end_with_the_prompt() -> None:
    t = Transcript()
    t.agent_piece("Hello.", "a")
    t.caller_piece("Hi.", "a")
    t.caller_piece(" I need help.", "a")
    t.finish_all()
    t.note("handoff", "b", "a -> b")
    turns = history_turns(t.entries, "PROMPT")
    assert [c.role for c in turns] == ["model", "user"]
    assert turns[0].text == "Hello."
    assert turns[1].text == "Hi. I need help.\n\nPROMPT"
