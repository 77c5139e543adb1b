"""agents.yaml: the agents, the pipeline of stages, and the handoff graph between them.

The file is the product's main configuration surface, edited by people who are not Python
developers, so every mistake must stop start-up with one message that names the field
(``agents[1].voice``) and the problem. Unknown keys are errors rather than silently ignored:
a misspelt ``can_retrun_to`` would otherwise quietly remove a handoff path from live calls.

Graph semantics: a call starts at the first stage. From a stage, the active agent may hand the
caller to the agent of its ``next`` stage and to the agents of its ``can_return_to`` stages.
Those agent ids become the ``target`` enum of the ``handoff_conversation`` tool.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: The 30 prebuilt Gemini Live voices (Firebase "Configuration options for the Live API").
#: Any other name is an error at start-up: the alternative is every call failing at connect.
GEMINI_VOICES: tuple[str, ...] = (
    "Zephyr", "Kore", "Orus", "Autonoe", "Umbriel", "Erinome", "Laomedeia", "Schedar",
    "Achird", "Sadachbia", "Puck", "Fenrir", "Aoede", "Enceladus", "Algieba", "Algenib",
    "Achernar", "Gacrux", "Zubenelgenubi", "Sadaltager", "Charon", "Leda", "Callirrhoe",
    "Iapetus", "Despina", "Rasalgethi", "Alnilam", "Pulcherrima", "Vindemiatrix", "Sulafat",
)  # fmt: skip

DEFAULT_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"


class AgentsFileError(ValueError):
    """An agents file that cannot be used; the message names the file, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Fallback(_Strict):
    """What the caller gets when Gemini is gone for good: a spoken apology, or a transfer.

    Better than dead air: the gateway ends the stream and the carrier says ``say`` (then hangs
    up), or dials ``transfer_to`` (E.164 like ``+15551234567``, or a ``sip:`` URI).
    """

    say: str = "Sorry, we cannot continue this call right now. Please call again later."
    transfer_to: str = Field(default="", pattern=r"^(|\+[1-9][0-9]{6,14}|sips?:\S+)$")


#: What a caller hears when the gateway has no room for the call.
BUSY = Fallback(say="All of our lines are busy right now. Please call again in a few minutes.")


class Agent(_Strict):
    """One agent: who it is (identity block), how it sounds (voice) and how it opens."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    role: str = Field(min_length=1)
    description: str = ""
    scope: str = ""
    system_prompt: str = Field(min_length=1)
    voice: str = "Puck"
    greeting: str = ""
    tools: tuple[str, ...] = ()
    #: Overrides the file's top-level ``fallback`` while this agent is active.
    fallback: Fallback | None = None

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in tools if t not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(
                f"unknown tool {unknown[0]!r}{did_you_mean(unknown[0], BUILTIN_TOOLS)} "
                f"built-in tools are: {', '.join(BUILTIN_TOOLS)} "
                "(handoff_conversation is added automatically from the pipeline)"
            )
        return tools

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, voice: str) -> str:
        """A prebuilt voice, its case normalised (``aoede`` is ``Aoede``)."""
        by_lower = {v.lower(): v for v in GEMINI_VOICES}
        if voice.lower() in by_lower:
            return by_lower[voice.lower()]
        raise ValueError(
            f"unknown voice {voice!r}{did_you_mean(voice, GEMINI_VOICES)} "
            f"Gemini's voices are: {', '.join(GEMINI_VOICES)}"
        )

    def system_instruction(self) -> str:
        """The agent's prompt plus its identity block, exactly as Gemini receives it.

        The identity block is what lets the model introduce itself correctly after a handoff
        and stay inside its scope; lines for empty fields are left out rather than sent blank.
        """
        lines = ["--- Agent Identity ---", f"Role: {self.role}"]
        if self.description:
            lines.append(f"Description: {self.description}")
        if self.scope:
            lines.append(f"Scope: {self.scope}")
        return f"{self.system_prompt}\n\n" + "\n".join(lines)


#: Gemini Live tools an agent may enable by name in agents.yaml.
BUILTIN_TOOLS: tuple[str, ...] = ("google_search",)


class Stage(_Strict):
    """One phase of the conversation, served by one agent."""

    phase: str = Field(min_length=1)
    agent_id: str = Field(min_length=1)
    next: str | None = None
    can_return_to: tuple[str, ...] = ()


class AgentsFile(_Strict):
    """The whole file, as written (before graph validation)."""

    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    agents: tuple[Agent, ...] = Field(min_length=1)
    pipeline: tuple[Stage, ...] = Field(min_length=1)
    fallback: Fallback = Fallback()


@dataclass(frozen=True, slots=True)
class HandoffTarget:
    """A stage the active agent may hand the caller to, as offered in the tool's enum."""

    agent: Agent
    stage: Stage


class AgentGraph:
    """Validated agents and pipeline, with the questions the gateway asks of them answered."""

    def __init__(self, spec: AgentsFile, *, source: str = "agents.yaml") -> None:
        self.spec = spec
        self.source = source
        self.warnings: list[str] = []
        self._agents = {a.id: a for a in spec.agents}
        self._stages = {s.phase: s for s in spec.pipeline}
        self._validate()

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def first_stage(self) -> Stage:
        return self.spec.pipeline[0]

    def agent(self, agent_id: str) -> Agent:
        return self._agents[agent_id]

    def fallback(self, agent: Agent | None = None) -> Fallback:
        """The fallback in force while ``agent`` is active (the file's default otherwise)."""
        return agent.fallback if agent is not None and agent.fallback else self.spec.fallback

    def stage(self, phase: str) -> Stage:
        return self._stages[phase]

    def targets(self, stage: Stage) -> list[HandoffTarget]:
        """Agents reachable from ``stage`` by one handoff, in declaration order, no repeats.

        The ``next`` stage comes first: the model tends to pick the first enum value when it is
        unsure, and moving forward is the common case.
        """
        phases = ([stage.next] if stage.next else []) + list(stage.can_return_to)
        seen: set[str] = {stage.agent_id}
        out: list[HandoffTarget] = []
        for phase in phases:
            target_stage = self._stages[phase]
            if target_stage.agent_id in seen:
                continue
            seen.add(target_stage.agent_id)
            out.append(HandoffTarget(self._agents[target_stage.agent_id], target_stage))
        return out

    def describe(self) -> str:
        """A human-readable view of the graph, printed by ``gateway check``."""
        lines = [f"model: {self.model}", "agents:"]
        for agent in self.spec.agents:
            greeting = " (speaks first)" if agent.greeting else ""
            lines.append(f"  {agent.id}: {agent.role}, voice {agent.voice}{greeting}")
        lines.append("pipeline:")
        for i, stage in enumerate(self.spec.pipeline):
            marker = "start" if i == 0 else "     "
            targets = (
                ", ".join(f"{t.agent.id} ({t.stage.phase})" for t in self.targets(stage)) or "none"
            )
            lines.append(f"  {marker} {stage.phase} [{stage.agent_id}] -> hands off to: {targets}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)

    def _validate(self) -> None:
        errors: list[str] = []
        seen_ids: set[str] = set()
        for i, agent in enumerate(self.spec.agents):
            if agent.id in seen_ids:
                errors.append(f"agents[{i}].id: duplicate agent id {agent.id!r}")
            seen_ids.add(agent.id)
        seen_phases: set[str] = set()
        for i, stage in enumerate(self.spec.pipeline):
            if stage.phase in seen_phases:
                errors.append(f"pipeline[{i}].phase: duplicate phase {stage.phase!r}")
            seen_phases.add(stage.phase)
        for i, stage in enumerate(self.spec.pipeline):
            if stage.agent_id not in self._agents:
                errors.append(
                    f"pipeline[{i}].agent_id: unknown agent {stage.agent_id!r}"
                    f"{did_you_mean(stage.agent_id, self._agents)} "
                    f"agents are: {', '.join(self._agents)}"
                )
            if stage.next is not None and stage.next not in self._stages:
                errors.append(
                    f"pipeline[{i}].next: unknown phase {stage.next!r}"
                    f"{did_you_mean(stage.next, self._stages)} "
                    f"phases are: {', '.join(self._stages)}"
                )
            for j, phase in enumerate(stage.can_return_to):
                if phase not in self._stages:
                    errors.append(
                        f"pipeline[{i}].can_return_to[{j}]: unknown phase {phase!r}"
                        f"{did_you_mean(phase, self._stages)} "
                        f"phases are: {', '.join(self._stages)}"
                    )
        if errors:
            raise AgentsFileError(f"{self.source}: {errors[0]}")
        reachable = self._reachable_phases()
        for i, stage in enumerate(self.spec.pipeline):
            if stage.phase not in reachable:
                raise AgentsFileError(
                    f"{self.source}: pipeline[{i}]: stage {stage.phase!r} is unreachable from the "
                    f"first stage {self.first_stage.phase!r} (no next/can_return_to leads to it)"
                )
        used = {s.agent_id for s in self.spec.pipeline}
        for i, agent in enumerate(self.spec.agents):
            if agent.id not in used:
                self.warnings.append(f"agents[{i}]: agent {agent.id!r} is in no pipeline stage")

    def _reachable_phases(self) -> set[str]:
        todo = [self.first_stage.phase]
        seen: set[str] = set()
        while todo:
            phase = todo.pop()
            if phase in seen:
                continue
            seen.add(phase)
            stage = self._stages[phase]
            todo.extend(([stage.next] if stage.next else []) + list(stage.can_return_to))
        return seen


def parse_agents(text: str, *, source: str = "agents.yaml") -> AgentGraph:
    """Parse and validate agents.yaml text; raises :class:`AgentsFileError` on any problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AgentsFileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AgentsFileError(f"{source}: expected a mapping with 'agents' and 'pipeline'")
    try:
        spec = AgentsFile.model_validate(data)
    except ValidationError as exc:
        raise AgentsFileError(f"{source}: {_first_error(exc, data)}") from None
    return AgentGraph(spec, source=source)


def load_agents(path: str | Path) -> AgentGraph:
    """Read and validate an agents file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgentsFileError(f"{path}: file not found (set AGENTS_FILE or create it)") from None
    except OSError as exc:
        raise AgentsFileError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_agents(text, source=str(path))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'system_prompt'?"`` for the nearest choice (case-insensitive), else
    ``";"``, so a message reads on either way."""
    options = {c.lower(): c for c in choices}
    near = difflib.get_close_matches(word.lower(), options, n=1, cutoff=0.6)
    return f"; did you mean {options[near[0]]!r}?" if near else ";"


def _first_error(exc: ValidationError, data: Any) -> str:
    """Render pydantic's first error as ``agents[1].voice: problem`` for humans.

    A misspelt key comes first: ``sytem_prompt`` also makes ``system_prompt`` "missing", and
    the typo is what the user has to fix.
    """
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    location = _format_location(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        keys = _keys_at(err["loc"])
        key = str(err["loc"][-1])
        message = f"unknown key{did_you_mean(key, keys)} valid keys here: {', '.join(keys)}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in ("string_too_short", "too_short"):
        message = "must not be empty"
    else:
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
    return f"{location}: {message}" if location else message


def _keys_at(loc: Sequence[int | str]) -> list[str]:
    """The keys valid where ``loc``'s last key was found (its parent's model fields)."""
    model: type[BaseModel] | None = AgentsFile
    for item in loc[:-1]:
        if isinstance(item, int) or model is None:
            continue
        field = model.model_fields.get(item)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``Agent``, ``tuple[Agent, ...]`` or ``Fallback | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_location(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts)
