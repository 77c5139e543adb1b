"""What the simulated Gemini Live model says and does.

A script is an ordered list of steps. Each time the model has to answer (a *trigger*), the first
step not used yet whose ``on`` and ``when`` match is consumed. Triggers:

* ``text``: a text turn from the client (``clientContent`` with ``turnComplete: true``, or
  ``realtimeInput.text``);
* ``caller``: the end of a caller utterance, found by the simulator's energy VAD in the audio (or an
  ``activityEnd`` when the client disabled automatic activity detection).

Step fields (all optional)::

    on: any | text | caller   # which trigger the step answers (default any)
    when: "Role: Portfolio advisor"  # substring the connection's system instruction must contain
    hear: "I want to sell my shares"  # inputTranscription reported for the caller utterance
    say: "Sure, one moment."          # spoken first: a tone + outputTranscription pieces
    seconds: 1.5                      # audio length of `say` (default 0.06 s per char, min 0.4 s)
    tone_hz: 440                      # tone pitch (default: the pitch of the setup's voice)
    level_dbfs: -12                   # tone level (default -12 dBFS)
    tool_call: {name: lookup_order, args: {order_id: "A17"}}  # issued after `say`; the turn then
                                      # waits for the matching toolResponse
    then_say: "Your order shipped."   # spoken after the toolResponse arrives
    then_seconds: 1.0                 # audio length of `then_say` (same default as `seconds`)

A script file holds ``steps: [...]`` in YAML or JSON. In YAML, write ``on:`` freely: PyYAML reads
a bare ``on`` key as the boolean ``true``, and the loader maps it back.

Default behaviour when no step matches (or there is no script):

* text trigger: say "Hello, this is the {role}. How can I help you today?", where ``{role}`` is
  taken from a ``Role: X`` line of the system instruction (else "assistant").
* caller trigger: if the setup declares a function named ``handoff_conversation`` whose ``target``
  parameter has an ``enum``, and this agent (identified by its exact system instruction) has
  already answered a caller turn in this logical session, say "Let me transfer you." and call
  ``handoff_conversation`` with ``target`` = the first enum value, a ``reason`` and a ``summary``
  of what the agent heard. Otherwise say "I understand. Let me help you with that."

The default caller utterance transcript is "caller utterance {n} ({seconds:.1f} s)", where n
counts the caller utterances of the logical session, starting at 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

Trigger = Literal["text", "caller"]
StepOn = Literal["any", "text", "caller"]

SECONDS_PER_CHAR = 0.06
MIN_SPEECH_SECONDS = 0.4
HANDOFF_FUNCTION = "handoff_conversation"
DEFAULT_LEVEL_DBFS = -12.0

_ROLE_LINE = re.compile(r"^[\s*#>-]*Role\s*:\s*\**\s*(?P<role>.+?)\s*\**\s*$", re.MULTILINE)


class ScriptError(ValueError):
    """A script file or step definition is invalid; the message names the place."""


@dataclass(frozen=True)
class ToolCallSpec:
    """A function call the model issues: ``name`` and its JSON ``args``."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One scripted model turn; see the module docstring for the meaning of each field."""

    on: StepOn = "any"
    when: str | None = None
    hear: str | None = None
    say: str | None = None
    seconds: float | None = None
    tone_hz: float | None = None
    level_dbfs: float = DEFAULT_LEVEL_DBFS
    tool_call: ToolCallSpec | None = None
    then_say: str | None = None
    then_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.on not in ("any", "text", "caller"):
            raise ScriptError(f"'on' must be any, text or caller, got {self.on!r}")
        for name in ("seconds", "then_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ScriptError(f"{name!r} must be positive, got {value!r}")
        if self.tone_hz is not None and not 20 <= self.tone_hz <= 11_000:
            raise ScriptError(f"'tone_hz' must be within 20..11000 Hz, got {self.tone_hz!r}")
        if not -120 <= self.level_dbfs <= 0:
            raise ScriptError(f"'level_dbfs' must be within -120..0, got {self.level_dbfs!r}")

    def matches(self, trigger: Trigger, system_instruction: str) -> bool:
        """Whether this step answers ``trigger`` on a connection with this system instruction."""
        if self.on not in ("any", trigger):
            return False
        return self.when is None or self.when in system_instruction

    @property
    def say_seconds(self) -> float:
        """Audio length of ``say``."""
        return self.seconds if self.seconds is not None else speech_seconds(self.say or "")

    @property
    def then_say_seconds(self) -> float:
        """Audio length of ``then_say``."""
        if self.then_seconds is not None:
            return self.then_seconds
        return speech_seconds(self.then_say or "")


def speech_seconds(text: str) -> float:
    """Default audio length for spoken ``text``: 0.06 s per character, at least 0.4 s."""
    return max(MIN_SPEECH_SECONDS, SECONDS_PER_CHAR * len(text))


class Script:
    """An ordered list of steps, each used at most once (in the order given)."""

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        self._steps: tuple[Step, ...] = tuple(steps)
        self._used: list[bool] = [False] * len(self._steps)

    def __repr__(self) -> str:
        return f"Script({len(self._steps)} steps, {self._used.count(False)} unused)"

    @property
    def steps(self) -> tuple[Step, ...]:
        return self._steps

    def remaining(self) -> list[Step]:
        """Steps not consumed yet, in order."""
        return [step for step, used in zip(self._steps, self._used, strict=True) if not used]

    def take(self, trigger: Trigger, system_instruction: str) -> Step | None:
        """Consume and return the first unused step matching the trigger, if any."""
        for index, step in enumerate(self._steps):
            if not self._used[index] and step.matches(trigger, system_instruction):
                self._used[index] = True
                return step
        return None

    def reset(self) -> None:
        """Mark every step unused again."""
        self._used = [False] * len(self._steps)

    @classmethod
    def from_data(cls, data: object, source: str = "<script>") -> Script:
        """Build a script from parsed YAML/JSON: a mapping with a ``steps`` list."""
        if not isinstance(data, Mapping) or "steps" not in data:
            raise ScriptError(f"{source}: expected a mapping with a 'steps' list at the top level")
        extra = sorted(str(key) for key in data if key != "steps")
        if extra:
            raise ScriptError(f"{source}: unknown top-level key(s) {extra}; only 'steps' is read")
        raw_steps = data["steps"]
        if not isinstance(raw_steps, list):
            raise ScriptError(f"{source}: 'steps' must be a list")
        return cls(step_from_data(raw, f"{source}: step {n}") for n, raw in enumerate(raw_steps, 1))


_TEXT_FIELDS = ("when", "hear", "say", "then_say")
_NUMBER_FIELDS = ("seconds", "tone_hz", "level_dbfs", "then_seconds")
_STEP_FIELDS = tuple(f.name for f in fields(Step))


def step_from_data(raw: object, where: str = "step") -> Step:
    """Build one step from a parsed mapping, with errors that say where the problem is."""
    if not isinstance(raw, Mapping):
        raise ScriptError(f"{where}: expected a mapping, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = "on" if key is True else key  # YAML 1.1 reads a bare `on` key as true
        if name not in _STEP_FIELDS:
            raise ScriptError(
                f"{where}: unknown key {key!r} (expected one of {list(_STEP_FIELDS)})"
            )
        values[name] = value
    for name in _TEXT_FIELDS:
        if values.get(name) is not None and not isinstance(values[name], str):
            raise ScriptError(f"{where}: {name!r} must be a string, got {values[name]!r}")
    for name in _NUMBER_FIELDS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ScriptError(f"{where}: {name!r} must be a number, got {value!r}")
        if value is not None:
            values[name] = float(value)
    if "tool_call" in values and values["tool_call"] is not None:
        values["tool_call"] = _tool_call_from_data(values["tool_call"], where)
    if values.get("level_dbfs") is None:
        values.pop("level_dbfs", None)
    values.setdefault("on", "any")
    try:
        return Step(**values)
    except ScriptError as exc:
        raise ScriptError(f"{where}: {exc}") from None


def _tool_call_from_data(raw: object, where: str) -> ToolCallSpec:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ScriptError(f"{where}: 'tool_call' must be a mapping with a non-empty 'name'")
    unknown = sorted(str(key) for key in raw if key not in ("name", "args"))
    if unknown:
        raise ScriptError(f"{where}: unknown key(s) {unknown} in 'tool_call' (name, args)")
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        raise ScriptError(f"{where}: 'tool_call.args' must be a mapping")
    try:
        json.dumps(args)
    except (TypeError, ValueError) as exc:
        raise ScriptError(f"{where}: 'tool_call.args' is not JSON-serialisable: {exc}") from None
    return ToolCallSpec(name=raw["name"], args=dict(args))


def load_script(path: str | Path) -> Script:
    """Read a script from a YAML (.yaml/.yml) or JSON (.json) file; other suffixes parse as YAML."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"{file}: cannot read script: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ScriptError(f"{file}: not valid {_format_name(file)}: {exc}") from None
    return Script.from_data(data, str(file))


def _format_name(file: Path) -> str:
    return "JSON" if file.suffix.lower() == ".json" else "YAML"


# --- default behaviour -------------------------------------------------------------------------


def role_from_instruction(system_instruction: str) -> str:
    """The ``X`` of the first ``Role: X`` line of the system instruction, else "assistant"."""
    match = _ROLE_LINE.search(system_instruction)
    return match.group("role") if match else "assistant"


def default_step(
    trigger: Trigger,
    *,
    system_instruction: str,
    function_declarations: Sequence[Mapping[str, Any]],
    caller_turns_answered: int,
    heard: Sequence[str] = (),
) -> Step:
    """The step the model takes when no scripted step matches (see the module docstring).

    ``caller_turns_answered`` counts the caller turns this agent (same system instruction) has
    already answered in the logical session; ``heard`` is what it heard from the caller so far.
    """
    if trigger == "text":
        role = role_from_instruction(system_instruction)
        return Step(on="text", say=f"Hello, this is the {role}. How can I help you today?")
    target = handoff_target(function_declarations)
    if target is not None and caller_turns_answered >= 1:
        summary = "; ".join(heard) if heard else "no caller speech was transcribed"
        return Step(
            on="caller",
            say="Let me transfer you.",
            tool_call=ToolCallSpec(
                name=HANDOFF_FUNCTION,
                args={
                    "target": target,
                    "reason": f"The caller needs the {target}.",
                    "summary": f"Caller said: {summary}",
                },
            ),
        )
    return Step(on="caller", say="I understand. Let me help you with that.")


def handoff_target(function_declarations: Sequence[Mapping[str, Any]]) -> str | None:
    """First ``target`` enum value of a declared ``handoff_conversation`` function, if any."""
    for declaration in function_declarations:
        if declaration.get("name") != HANDOFF_FUNCTION:
            continue
        for schema_key in ("parameters", "parametersJsonSchema"):
            schema = declaration.get(schema_key)
            if not isinstance(schema, Mapping):
                continue
            properties = schema.get("properties")
            target = properties.get("target") if isinstance(properties, Mapping) else None
            enum = target.get("enum") if isinstance(target, Mapping) else None
            first = enum[0] if isinstance(enum, list) and enum else None
            if isinstance(first, str):
                return first
    return None
