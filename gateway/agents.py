"""agents.yaml: the agents, the pipeline of stages, and the handoff graph between them.

The file is the product's main configuration surface, edited by people who are not Python
developers, so every mistake must stop start-up with one message that names the field
(``agents[1].voice``) and the problem. Unknown keys are errors rather than silently ignored:
a misspelt ``can_retrun_to`` would otherwise quietly remove a handoff path from live calls.

Graph semantics: a call starts at the first stage. From a stage, the active agent may hand the
caller to the agent of its ``next`` stage and to the agents of its ``can_return_to`` stages.
Those agent ids become the ``target`` enum of the ``handoff_conversation`` tool. A
``routes`` entry starts calls to one dialled number at another stage instead.

Agents act through tools: Gemini's built-ins, the gateway's own ``end_call`` and
``transfer_call``, and HTTP tools declared at the top level (``tools:``) and enabled per agent.
``${VAR}`` in an HTTP tool's url and header values comes from the environment at start-up, so
tokens stay out of the file; the expanded header values are secrets from then on.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from gateway.variables import CALL_VARIABLES, unknown_variables

#: The 30 prebuilt Gemini Live voices (Firebase "Configuration options for the Live API").
#: Any other name is an error at start-up: the alternative is every call failing at connect.
GEMINI_VOICES: tuple[str, ...] = (
    "Zephyr", "Kore", "Orus", "Autonoe", "Umbriel", "Erinome", "Laomedeia", "Schedar",
    "Achird", "Sadachbia", "Puck", "Fenrir", "Aoede", "Enceladus", "Algieba", "Algenib",
    "Achernar", "Gacrux", "Zubenelgenubi", "Sadaltager", "Charon", "Leda", "Callirrhoe",
    "Iapetus", "Despina", "Rasalgethi", "Alnilam", "Pulcherrima", "Vindemiatrix", "Sulafat",
)  # fmt: skip

DEFAULT_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"

#: The speech-to-speech services an agent can run on.
Provider = Literal["gemini", "openai"]
PROVIDERS: tuple[Provider, ...] = get_args(Provider)
#: OpenAI Realtime's voices (the openai SDK's ``RealtimeAudioConfigOutput.voice``, 3.63).
OPENAI_VOICES: tuple[str, ...] = (
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
#: ``gpt-realtime`` and ``gpt-realtime-mini`` shut down on 2027-01-20 (the SDK's model notes).
DEFAULT_OPENAI_MODEL = "gpt-realtime-2.1"
#: Each provider's model and voice when the file names none.
DEFAULT_MODELS: dict[Provider, str] = {"gemini": DEFAULT_MODEL, "openai": DEFAULT_OPENAI_MODEL}
DEFAULT_VOICES: dict[Provider, str] = {"gemini": "Puck", "openai": "marin"}
VOICES: dict[Provider, tuple[str, ...]] = {"gemini": GEMINI_VOICES, "openai": OPENAI_VOICES}
PROVIDER_NAMES: dict[Provider, str] = {"gemini": "Gemini", "openai": "OpenAI"}

#: The function the gateway declares for handoffs; no declared tool may take its name.
HANDOFF_TOOL = "handoff_conversation"
END_CALL_TOOL = "end_call"
TRANSFER_CALL_TOOL = "transfer_call"
#: Tools an agent may enable by name in agents.yaml without declaring them.
BUILTIN_TOOLS: tuple[str, ...] = ("google_search", END_CALL_TOOL, TRANSFER_CALL_TOOL)

#: A phone number as carriers send it (E.164), or a SIP URI, for transfers.
_DESTINATION = r"^(\+[1-9][0-9]{6,14}|sips?:\S+)$"
_E164 = r"^\+[1-9][0-9]{6,14}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: ``${VAR}`` in an HTTP tool's url and header values.
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    #: Overrides the file's ``provider`` for this agent; the graph fills it in.
    provider: Provider | None = None
    #: One of the provider's voices; the graph fills in its default and normalises the case.
    voice: str = ""
    greeting: str = ""
    #: Built-in tool names and names declared in the file's ``tools:`` (checked by the graph,
    #: which sees the whole file).
    tools: tuple[str, ...] = ()
    #: ``transfer_call`` destinations: a name the model picks -> E.164 number or SIP URI.
    transfers: dict[str, str] = {}
    #: Overrides the file's top-level ``fallback`` while this agent is active.
    fallback: Fallback | None = None

    @field_validator("transfers")
    @classmethod
    def _valid_transfers(cls, transfers: dict[str, str]) -> dict[str, str]:
        """Names the model can say back exactly; destinations a carrier can dial. The number
        is not echoed: an error message is no place to spread a private line."""
        for name, destination in transfers.items():
            if not re.match(_NAME, name):
                raise ValueError(
                    f"transfer name {name!r} must start with a letter or digit and use only "
                    "letters, digits, . _ -"
                )
            if not re.match(_DESTINATION, destination.strip()):
                raise ValueError(
                    f"transfer {name!r}: the destination must be an E.164 number such as "
                    '"+15551234567" (quoted) or a sip:/sips: URI'
                )
        return {name: destination.strip() for name, destination in transfers.items()}

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


class HttpTool(_Strict):
    """A function the model may call that the gateway carries out as one HTTP request.

    ``parameters`` is the JSON Schema of the arguments (sent to Gemini Live as its own
    ``Schema``: see ``gateway.live.schema`` and :data:`LIVE_SCHEMA_KEYWORDS`). Header
    values are ``SecretStr`` because they usually carry a token: they show as ``**********``
    in every repr, and :meth:`header_values` is the one way to read them.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    #: Not in the repr: a ``${VAR}`` expanded into its query is usually a key.
    url: str = Field(repr=False)
    method: Literal["GET", "POST"] = "POST"
    headers: dict[str, SecretStr] = {}
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: The arguments are personal data: call records keep the call, not what was sent.
    redact: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in BUILTIN_TOOLS or name == HANDOFF_TOOL:
            raise ValueError(f"{name!r} is the gateway's own tool; give the HTTP tool another name")
        return name

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """Gemini passes a function's arguments as one object, so the schema must be one."""
        if schema.get("type") != "object":
            raise ValueError("must be a JSON Schema with type: object (the arguments)")
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise ValueError("properties must be a mapping of argument name to schema")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("required must be a list of argument names")
        missing = [r for r in required if r not in properties]
        if missing:
            raise ValueError(f"required names {missing[0]!r}, which is not in properties")
        return schema

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        """The url is not echoed: it may hold a query token expanded from ``${VAR}``."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, method: object) -> object:
        return method.strip().upper() if isinstance(method, str) else method

    def header_values(self) -> dict[str, str]:
        """The headers to send, with their real values."""
        return {name: value.get_secret_value() for name, value in self.headers.items()}


class Route(_Strict):
    """Calls to ``number`` start at stage ``phase`` instead of the first stage."""

    number: str = Field(pattern=_E164)
    phase: str = Field(min_length=1)

    @field_validator("number", mode="before")
    @classmethod
    def _quoted(cls, number: object) -> object:
        """YAML reads an unquoted ``+15551234567`` as the integer 15551234567."""
        if isinstance(number, int):
            raise ValueError(
                f'write the number in quotes, as "+{number}": unquoted, YAML reads it as an '
                "integer and drops the +"
            )
        return number


class Stage(_Strict):
    """One phase of the conversation, served by one agent."""

    phase: str = Field(min_length=1)
    agent_id: str = Field(min_length=1)
    next: str | None = None
    can_return_to: tuple[str, ...] = ()


class AgentsFile(_Strict):
    """The whole file, as written (before graph validation)."""

    provider: Provider = "gemini"
    #: The model of ``provider``; empty: that provider's default.
    model: str = ""
    agents: tuple[Agent, ...] = Field(min_length=1)
    pipeline: tuple[Stage, ...] = Field(min_length=1)
    fallback: Fallback = Fallback()
    tools: tuple[HttpTool, ...] = ()
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True, slots=True)
class HandoffTarget:
    """A stage the active agent may hand the caller to, as offered in the tool's enum."""

    agent: Agent
    stage: Stage


class AgentGraph:
    """Validated agents and pipeline, with the questions the gateway asks of them answered."""

    def __init__(
        self, spec: AgentsFile, *, source: str = "agents.yaml", expanded_secrets: Sequence[str] = ()
    ) -> None:
        errors = _model_errors(spec.provider, spec.model) + _voice_errors(spec)
        if errors:
            raise AgentsFileError(f"{source}: {errors[0]}")
        spec = _resolved(spec)
        self.spec = spec
        self.source = source
        self.warnings: list[str] = []
        self._agents = {a.id: a for a in spec.agents}
        self._stages = {s.phase: s for s in spec.pipeline}
        self._http_tools = {t.name: t for t in spec.tools}
        self._routes = {r.number: r for r in spec.routes}
        self._expanded_secrets = list(expanded_secrets)
        self._validate()

    @property
    def provider(self) -> Provider:
        """The file's provider (an agent may run on another: ``Agent.provider``)."""
        return self.spec.provider

    @property
    def model(self) -> str:
        """The file's model, for its provider."""
        return self.spec.model

    @property
    def providers(self) -> tuple[Provider, ...]:
        """The providers the agents run on, the file's first."""
        used = {agent.provider for agent in self.spec.agents}
        return tuple(p for p in dict.fromkeys((self.provider, *PROVIDERS)) if p in used)

    def model_of(self, provider: Provider) -> str:
        """The model the file gives ``provider``: its ``model`` for its own provider, the
        provider's default for the other (a per-agent override names no model)."""
        return self.spec.model if provider == self.spec.provider else DEFAULT_MODELS[provider]

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

    def start_stage(self, called_number: str | None, *, phase: str | None = None) -> Stage:
        """Where a call starts: at ``phase`` when the call asked for one (an outbound call
        placed with ``"phase"``), else at the route of ``called_number`` (the gateway's own
        number of the call), else at the first stage.

        A ``phase`` the graph does not know is passed over rather than refused: ``POST /calls``
        checks it, but the file can change between the dial and the answer, and a call that
        starts at the usual stage beats one that fails (the bridge logs it)."""
        if phase is not None and phase in self._stages:
            return self._stages[phase]
        route = self._routes.get(called_number) if called_number else None
        return self._stages[route.phase] if route is not None else self.first_stage

    def has_phase(self, phase: str) -> bool:
        return phase in self._stages

    @property
    def phases(self) -> tuple[str, ...]:
        """The pipeline's phases, in the file's order."""
        return tuple(self._stages)

    def http_tools(self, agent: Agent) -> tuple[HttpTool, ...]:
        """The declared HTTP tools ``agent`` enables, in the agent's order."""
        return tuple(self._http_tools[name] for name in agent.tools if name in self._http_tools)

    def secrets(self) -> list[str]:
        """Every header value and every ``${VAR}`` expanded into a header or a url's query,
        for the log scrubber: the file keeps tokens out of git, this keeps them out of logs."""
        values = [v for tool in self.spec.tools for v in tool.header_values().values()]
        return values + self._expanded_secrets

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
        """A human-readable view of the graph, printed by ``gateway check``.

        Header values never appear, and ``${VAR}`` values in a url's query are masked: the
        output is meant to be pasted into tickets.
        """
        lines = [f"provider: {self.provider}", f"model: {self.model}", "agents:"]
        for agent in self.spec.agents:
            greeting = " (speaks first)" if agent.greeting else ""
            on = f" on {agent.provider}" if agent.provider != self.provider else ""
            lines.append(f"  {agent.id}: {agent.role}, voice {agent.voice}{on}{greeting}")
            if agent.tools:
                lines.append(f"    tools: {', '.join(agent.tools)}")
            if agent.transfers:
                lines.append(f"    transfers: {', '.join(agent.transfers)}")
        lines.append("pipeline:")
        for i, stage in enumerate(self.spec.pipeline):
            marker = "start" if i == 0 else "     "
            targets = (
                ", ".join(f"{t.agent.id} ({t.stage.phase})" for t in self.targets(stage)) or "none"
            )
            lines.append(f"  {marker} {stage.phase} [{stage.agent_id}] -> hands off to: {targets}")
        if self.spec.tools:
            lines.append("http tools:")
            for tool in self.spec.tools:
                url = tool.url
                for secret in self._expanded_secrets:
                    url = url.replace(secret, "***")
                headers = f" (headers: {', '.join(tool.headers)})" if tool.headers else ""
                lines.append(f"  {tool.name}: {tool.method} {url}{headers}")
        if self.spec.routes:
            lines.append("routes:")
            for route in self.spec.routes:
                agent_id = self._stages[route.phase].agent_id
                lines.append(f"  {route.number} -> {route.phase} [{agent_id}]")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)

    def _validate(self) -> None:
        errors = _duplicates("agents", "id", "agent id", [a.id for a in self.spec.agents])
        errors += _duplicates("pipeline", "phase", "phase", [s.phase for s in self.spec.pipeline])
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
        errors.extend(self._tool_errors())
        errors.extend(self._route_errors())
        if errors:
            raise AgentsFileError(f"{self.source}: {errors[0]}")
        reachable = self._reachable_phases()
        for i, stage in enumerate(self.spec.pipeline):
            if stage.phase not in reachable:
                raise AgentsFileError(
                    f"{self.source}: pipeline[{i}]: stage {stage.phase!r} is unreachable from the "
                    f"first stage {self.first_stage.phase!r} or a routed stage (no "
                    "next/can_return_to leads to it)"
                )
        used = {s.agent_id for s in self.spec.pipeline}
        for i, agent in enumerate(self.spec.agents):
            if agent.id not in used:
                self.warnings.append(f"agents[{i}]: agent {agent.id!r} is in no pipeline stage")
        self._warn_about_tools()
        self._warn_about_variables()

    def _tool_errors(self) -> list[str]:
        """Each agent's tools exist (a field validator cannot see the file's ``tools:``), and
        ``transfer_call`` has somewhere to transfer to."""
        errors = _duplicates("tools", "name", "tool name", [t.name for t in self.spec.tools])
        valid = list(BUILTIN_TOOLS) + [t.name for t in self.spec.tools]
        for i, agent in enumerate(self.spec.agents):
            for j, name in enumerate(agent.tools):
                if name not in valid:
                    errors.append(
                        f"agents[{i}].tools[{j}]: unknown tool {name!r}{did_you_mean(name, valid)}"
                        f" tools are: {', '.join(valid)} (built in, or declared under tools:; "
                        f"{HANDOFF_TOOL} is added automatically from the pipeline)"
                    )
                elif name in agent.tools[:j]:
                    errors.append(f"agents[{i}].tools[{j}]: tool {name!r} is listed twice")
                elif name == "google_search" and agent.provider != "gemini":
                    errors.append(
                        f"agents[{i}].tools[{j}]: google_search is Gemini's own tool, and this "
                        f"agent runs on {agent.provider}; declare a search API as an HTTP tool "
                        "instead"
                    )
            if TRANSFER_CALL_TOOL in agent.tools and not agent.transfers:
                errors.append(
                    f"agents[{i}].transfers: {TRANSFER_CALL_TOOL} needs at least one destination, "
                    'e.g. transfers: {billing: "+15551234567"}'
                )
        return errors

    def _route_errors(self) -> list[str]:
        errors = _duplicates("routes", "number", "number", [r.number for r in self.spec.routes])
        for i, route in enumerate(self.spec.routes):
            if route.phase not in self._stages:
                errors.append(
                    f"routes[{i}].phase: unknown phase {route.phase!r}"
                    f"{did_you_mean(route.phase, self._stages)} "
                    f"phases are: {', '.join(self._stages)}"
                )
        return errors

    def _warn_about_tools(self) -> None:
        """Configuration that does nothing: likely a half-finished edit, but harmless."""
        enabled = {name for agent in self.spec.agents for name in agent.tools}
        for i, agent in enumerate(self.spec.agents):
            if agent.transfers and TRANSFER_CALL_TOOL not in agent.tools:
                self.warnings.append(
                    f"agents[{i}].transfers: unused, {TRANSFER_CALL_TOOL} is not in this "
                    "agent's tools"
                )
        for i, tool in enumerate(self.spec.tools):
            if tool.name not in enabled:
                self.warnings.append(
                    f"tools[{i}]: tool {tool.name!r} is in no agent's tools, so no agent can "
                    "call it"
                )
        gemini_tools = {
            name for agent in self.spec.agents if agent.provider == "gemini" for name in agent.tools
        }
        for i, tool in enumerate(self.spec.tools):
            if tool.name not in gemini_tools:
                continue  # OpenAI takes the JSON Schema as it is
            for where in live_schema_gaps(tool.parameters, f"tools[{i}].parameters"):
                self.warnings.append(
                    f"{where}: Gemini Live's function schema cannot carry this keyword, so "
                    "the model does not see it (your API still validates what it gets)"
                )

    def _warn_about_variables(self) -> None:
        known = ", ".join(CALL_VARIABLES) + ", param.NAME"
        for i, agent in enumerate(self.spec.agents):
            for field in ("system_prompt", "greeting"):
                for name in unknown_variables(getattr(agent, field)):
                    self.warnings.append(
                        f"agents[{i}].{field}: unknown variable {{{{{name}}}}} is left as "
                        f"written; known: {known}"
                    )

    def _reachable_phases(self) -> set[str]:
        """Phases reachable from an entry point: the first stage, or a routed one."""
        todo = [self.first_stage.phase] + [r.phase for r in self.spec.routes]
        seen: set[str] = set()
        while todo:
            phase = todo.pop()
            if phase in seen:
                continue
            seen.add(phase)
            stage = self._stages[phase]
            todo.extend(([stage.next] if stage.next else []) + list(stage.can_return_to))
        return seen


def _model_errors(provider: Provider, model: str) -> list[str]:
    """A model name the provider cannot serve: every call would fail at connect."""
    if not model:
        return []
    lowered = model.lower().removeprefix("models/")
    if provider == "gemini" and (lowered.startswith("gpt-") or "realtime" in lowered):
        return [
            f"model: {model!r} is an OpenAI model; set provider: openai to use it, or name a "
            f"Gemini Live model such as {DEFAULT_MODEL!r}"
        ]
    if provider == "openai" and not ("realtime" in lowered or lowered.startswith("gpt-audio")):
        hint = "set provider: gemini to use it, or" if lowered.startswith("gemini") else "name"
        return [
            f"model: {model!r} is not an OpenAI Realtime model; {hint} a realtime model such "
            f"as {DEFAULT_OPENAI_MODEL!r}"
        ]
    return []


def _voice_errors(spec: AgentsFile) -> list[str]:
    """Each voice exists at its agent's provider (a field validator cannot see the file's
    provider)."""
    errors = []
    for i, agent in enumerate(spec.agents):
        provider = agent.provider or spec.provider
        if not agent.voice or _voice(provider, agent.voice):
            continue
        voices = VOICES[provider]
        name = PROVIDER_NAMES[provider]
        other = next(
            (PROVIDER_NAMES[p] for p in PROVIDERS if p != provider and _voice(p, agent.voice)),
            None,
        )
        if other is not None:
            problem = f"{agent.voice!r} is a voice of {other}, but this agent runs on {provider}."
        else:
            problem = f"unknown voice {agent.voice!r}{did_you_mean(agent.voice, voices)}"
        errors.append(f"agents[{i}].voice: {problem} {name}'s voices are: {', '.join(voices)}")
    return errors


def _voice(provider: Provider, voice: str) -> str | None:
    """``voice`` as ``provider`` spells it (case normalised), or None if it has no such voice."""
    by_lower = {v.lower(): v for v in VOICES[provider]}
    return by_lower.get(voice.lower())


def _resolved(spec: AgentsFile) -> AgentsFile:
    """The file with every default filled in: the model, and each agent's provider and voice
    (so the rest of the gateway reads them without knowing the defaults)."""
    agents = []
    for agent in spec.agents:
        provider = agent.provider or spec.provider
        voice = _voice(provider, agent.voice) if agent.voice else DEFAULT_VOICES[provider]
        agents.append(agent.model_copy(update={"provider": provider, "voice": voice}))
    return spec.model_copy(
        update={"model": spec.model or DEFAULT_MODELS[spec.provider], "agents": tuple(agents)}
    )


#: The JSON Schema keywords an HTTP tool's ``parameters`` keep on their way to Gemini Live,
#: whose function declarations take a subset of OpenAPI 3.0 (``gateway.live.schema`` converts).
LIVE_SCHEMA_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "required", "items", "anyOf", "examples", "nullable",
    "$schema", "description", "title", "format", "pattern", "default", "minimum", "maximum",
    "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
})  # fmt: skip


def live_schema_gaps(schema: Mapping[str, Any], path: str) -> list[str]:
    """Where ``schema`` uses a keyword outside :data:`LIVE_SCHEMA_KEYWORDS`, as
    ``tools[0].parameters.properties.x.oneOf``, in the order written."""
    found = [f"{path}.{key}" for key in schema if key not in LIVE_SCHEMA_KEYWORDS]
    nested: list[tuple[str, object]] = [(f"{path}.items", schema.get("items"))]
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        nested += [(f"{path}.properties.{k}", v) for k, v in properties.items()]
    any_of = schema.get("anyOf")
    if isinstance(any_of, list):
        nested += [(f"{path}.anyOf[{i}]", v) for i, v in enumerate(any_of)]
    for where, sub in nested:
        if isinstance(sub, Mapping):
            found += live_schema_gaps(sub, where)
    return found


def _duplicates(section: str, key: str, noun: str, values: Sequence[str]) -> list[str]:
    """``section[i].key: duplicate noun 'x'`` for every value seen before, in order."""
    errors: list[str] = []
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            errors.append(f"{section}[{i}].{key}: duplicate {noun} {value!r}")
        seen.add(value)
    return errors


def parse_agents(
    text: str, *, source: str = "agents.yaml", environ: Mapping[str, str] | None = None
) -> AgentGraph:
    """Parse and validate agents.yaml text; raises :class:`AgentsFileError` on any problem.

    ``${VAR}`` references are expanded from ``environ`` (``os.environ`` when None) before
    validation, so a url is checked as it will be dialled.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AgentsFileError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise AgentsFileError(f"{source}: expected a mapping with 'agents' and 'pipeline'")
    try:
        expanded_secrets = _expand_tools(data, os.environ if environ is None else environ)
    except AgentsFileError as exc:
        raise AgentsFileError(f"{source}: {exc}") from None
    try:
        spec = AgentsFile.model_validate(data)
    except ValidationError as exc:
        raise AgentsFileError(f"{source}: {_first_error(exc, data)}") from None
    return AgentGraph(spec, source=source, expanded_secrets=expanded_secrets)


def load_agents(path: str | Path, *, environ: Mapping[str, str] | None = None) -> AgentGraph:
    """Read and validate an agents file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgentsFileError(f"{path}: file not found (set AGENTS_FILE or create it)") from None
    except OSError as exc:
        raise AgentsFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AgentsFileError(f"{path}: not UTF-8 text") from None
    return parse_agents(text, source=str(path), environ=environ)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line (its own text spans several and quotes the source):
    ``gateway check`` prints it, and a reload logs it, as one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def _expand_tools(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Replace ``${VAR}`` in each HTTP tool's url and header values, in place.

    Returns the values that are secrets: those expanded into a header (a log line may hold
    the bare token without its ``Bearer``) or into a url's query string (``?key=``), though
    not into its host or path, which usually are not. Anything of the wrong shape is left
    for validation to report.
    """
    expanded_secrets: list[str] = []
    tools = data.get("tools")
    if not isinstance(tools, list):
        return expanded_secrets
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        url = tool.get("url")
        if isinstance(url, str):
            query_at = url.find("?")
            for match in _ENV_REFERENCE.finditer(url):
                value = _env_value(match.group(1), environ, f"tools[{i}].url")
                if query_at != -1 and match.start() > query_at:
                    expanded_secrets.append(value)
            tool["url"] = _ENV_REFERENCE.sub(lambda m: environ[m.group(1)], url)
        headers = tool.get("headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                if isinstance(value, str):
                    for match in _ENV_REFERENCE.finditer(value):
                        where = f"tools[{i}].headers.{name}"
                        expanded_secrets.append(_env_value(match.group(1), environ, where))
                    headers[name] = _ENV_REFERENCE.sub(lambda m: environ[m.group(1)], value)
    return expanded_secrets


def _env_value(name: str, environ: Mapping[str, str], where: str) -> str:
    value = environ.get(name)
    if value is None:
        raise AgentsFileError(f"{where}: ${{{name}}} is not set in the environment")
    if not value.strip():
        raise AgentsFileError(f"{where}: ${{{name}}} is empty in the environment")
    return value


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
