"""The words the gateway says to the model around a handoff (the caller never hears them).

A resumed session does not carry the tool call that triggered the handoff, nor anything said
after its handle was issued, so the tool result alone would leave the new agent silent and
half-informed. The takeover prompt closes that gap: it names the new role, passes on the old
agent's reason and summary, and quotes what the caller said since the handle.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.agents import Agent
from gateway.call.transcript import Entry
from gateway.model.turns import Role, Turn, user_turn

#: The tool result the *old* agent receives: short, and telling it not to talk over the new one.
HANDOFF_ACCEPTED = {
    "result": "transferred",
    "instructions": "The caller is being transferred now. Do not say anything more.",
}


def handoff_rejected(target: object, valid: Sequence[str]) -> dict[str, str]:
    options = ", ".join(valid) if valid else "none"
    return {
        "error": f"Cannot transfer to {str(target)[:80]!r}. Valid targets: {options}. "
        "Continue helping the caller yourself or choose a valid target.",
    }


def takeover_prompt(agent: Agent, *, reason: str, summary: str, since: Sequence[Entry]) -> str:
    """Tell the new agent it has the call, why, and what it missed since the handle."""
    lines = [
        f"[Call transfer] You are now the {agent.role} and you are taking over this phone call "
        "from a colleague.",
    ]
    if reason:
        lines.append(f"Reason for the transfer: {reason}")
    if summary:
        lines.append(f"Your colleague's summary: {summary}")
    said = [e.text for e in since if e.speaker == "caller"]
    if said:
        lines.append("Since then the caller said: " + " / ".join(f'"{t}"' for t in said))
    notes = [e.text for e in since if e.speaker == "note"]
    if notes:
        lines.append("Meanwhile: " + "; ".join(notes))
    lines.append(
        f"Greet the caller, introduce yourself briefly as the {agent.role}, and continue the "
        "conversation from where it stands. Do not mention this note."
    )
    return "\n".join(lines)


def greeting_turns(greeting: str) -> list[Turn]:
    """The first agent's opening (its greeting, variables filled in), when it speaks first."""
    return [user_turn(greeting)] if greeting else []


def history_turns(entries: Sequence[Entry], final_prompt: str) -> list[Turn]:
    """Re-seed a *fresh* session (no usable handle) with the transcript, then the prompt.

    Consecutive lines of one side are merged because the API expects turns to alternate, and
    the prompt goes last as a user turn so the model answers it.
    """
    turns = _alternating(entries)
    prompt = final_prompt
    if turns and turns[-1][0] == "user":
        prompt = f"{turns.pop()[1]}\n\n{final_prompt}"
    return [*(Turn(role, text) for role, text in turns), user_turn(prompt)]


def recap_turns(since: Sequence[Entry], *, cut_off: bool) -> tuple[list[Turn], bool]:
    """Tell a resumed session what its handle does not hold; and whether it should answer.

    Used when replaying the caller's audio would not do (the model had begun answering, which
    the replay would restart from the start, or the audio exceeded the replay bound). The model
    answers when it was cut off mid-answer (it carries on from where the caller stopped hearing
    it) or when the caller spoke last; otherwise the recap only informs and the model waits.
    """
    lines = [
        "[The connection was briefly interrupted and the last moments of the call were lost. "
        "This is what happened since.]"
    ]
    last_speaker = ""
    for entry in since:
        if entry.speaker == "caller":
            lines.append(f'The caller said: "{entry.text}"')
        elif entry.speaker == "agent":
            cut = " (cut off here)" if entry.interrupted else ""
            lines.append(f'You said: "{entry.text}"{cut}')
        else:
            lines.append(f"[{entry.text}]")
            continue
        last_speaker = entry.speaker
    answer = cut_off or last_speaker == "caller"
    if cut_off:
        lines.append(
            "You were cut off while answering. Continue from where you stopped, without "
            "repeating what the caller already heard and without mentioning the interruption."
        )
    elif answer:
        lines.append("Answer the caller now, without mentioning the interruption.")
    else:
        lines.append("Do not speak now: wait for the caller. Do not mention the interruption.")
    return [user_turn("\n".join(lines))], answer


def context_turns(entries: Sequence[Entry]) -> list[Turn]:
    """The transcript as turns for a fresh session to know, sent without asking for a reply."""
    return [Turn(role, text) for role, text in _alternating(entries)]


def _alternating(entries: Sequence[Entry]) -> list[tuple[Role, str]]:
    turns: list[tuple[Role, str]] = []
    role: Role
    for entry in entries:
        if entry.speaker == "caller":
            role, text = "user", entry.text
        elif entry.speaker == "agent":
            role, text = "model", entry.text
        else:
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]} {text}")
        else:
            turns.append((role, text))
    return turns
