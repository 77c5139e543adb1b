"""The active agent as a model connection sees it: the agent plus this call's particulars."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.agents import Agent, HandoffTarget, HttpTool
from gateway.variables import render


@dataclass(frozen=True, slots=True)
class AgentPersona:
    """What a connection needs to know about the active agent.

    ``variables`` are the call's prompt variables (``gateway.variables``): the same agent
    reads differently on each call, so they travel with the persona, not the agent.
    """

    agent: Agent
    targets: tuple[HandoffTarget, ...] = ()
    http_tools: tuple[HttpTool, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)

    def system_instruction(self) -> str:
        """The agent's system instruction with this call's variables filled in."""
        return render(self.agent.system_instruction(), self.variables)

    def greeting(self) -> str:
        """The agent's greeting with this call's variables filled in ("" when it has none)."""
        return render(self.agent.greeting, self.variables)
