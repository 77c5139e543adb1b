"""``gateway demo``: one whole call, end to end, with no API key and no phone.

It starts the built-in model simulators (Gemini Live's and OpenAI Realtime's; ``--provider``
moves every agent to one of them), runs the real gateway against them on a free local port,
and places one call through the real Twilio protocol with the caller simulator: the first
agent greets, the caller asks for help, the agent hands the call to the first agent reachable
from the first stage (when there is one), which introduces itself and answers — calling one of
its HTTP tools first, when it has one — and, when it has ``end_call``, says goodbye and ends
the call. HTTP tools are never sent to the URLs in agents.yaml: the demo points them at a local
stand-in (:class:`~callsim.tools.ToolServer`), and Twilio's REST API (which ends the call) is
the local fake too. The call's events are printed as they happen, and what the caller heard is
written to a WAV — each simulated voice has its own pitch, so the handoff is audible (and
measured below the event list). The agents are the user's own (``--agents``, ``AGENTS_FILE``,
``./agents.yaml``), so "edit agents.yaml, run the demo" shows the edit; only without any is the
bundled example used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from callsim.callers.audio import Segment, Silence, Tone, render
from callsim.callers.twilio import TwilioCaller
from callsim.live.script import Script, Step, ToolCallSpec
from callsim.live.server import LiveSimulator
from callsim.live.voices import voice_pitch_hz
from callsim.realtime.server import RealtimeSimulator
from callsim.serving import serving
from callsim.tls import generate_tls
from callsim.tools import ToolServer
from callsim.twilio.api import TwilioApiSimulator
from gateway.agents import (
    DEFAULT_MODELS,
    END_CALL_TOOL,
    HANDOFF_TOOL,
    PROVIDER_NAMES,
    VOICES,
    Agent,
    AgentGraph,
    AgentsFileError,
    HttpTool,
    Provider,
    load_agents,
    parse_agents,
)
from gateway.audio.analysis import dominant_frequency, rms_dbfs
from gateway.logs import configure_logging
from gateway.server import build_state, running_gateway
from gateway.settings import ConfigError, Settings, SettingsError, load_settings
from gateway.web.state import GatewayState

CALLER_HZ = 150.0
#: The Twilio auth token of the demo's local Twilio fake (signs the webhooks, opens its REST API).
DEMO_TWILIO_TOKEN = "demo-twilio-auth-token"


def example_agents() -> AgentGraph:
    text = importlib.resources.files("gateway").joinpath("data/agents.example.yaml").read_text()
    return parse_agents(text, source="bundled example agents.yaml")


def demo_agents(agents_file: Path | None) -> AgentGraph:
    """The agents to demo: ``--agents``, else ``AGENTS_FILE`` when set, else ``./agents.yaml``
    when present, else the bundled example."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if agents_file is None and "agents_file" in settings.model_fields_set:
        agents_file = settings.agents_file
    if agents_file is None and settings.agents_file.is_file():
        agents_file = settings.agents_file
    try:
        return load_agents(agents_file) if agents_file else example_agents()
    except AgentsFileError as exc:
        raise ConfigError(str(exc)) from None


def with_provider(graph: AgentGraph, provider: Provider) -> AgentGraph:
    """``graph`` with every agent on ``provider``. A voice the provider lacks is swapped for
    one of its own, a different one per agent, so the caller still hears who is speaking."""
    if graph.provider == provider and graph.providers == (provider,):
        return graph
    voices = VOICES[provider]
    agents = [
        agent.model_copy(
            update={
                "provider": provider,
                "voice": agent.voice if agent.voice in voices else voices[i % len(voices)],
            }
        )
        for i, agent in enumerate(graph.spec.agents)
    ]
    model = graph.model if graph.provider == provider else DEFAULT_MODELS[provider]
    spec = graph.spec.model_copy(
        update={"provider": provider, "model": model, "agents": tuple(agents)}
    )
    return AgentGraph(spec, source=f"{graph.source}, on {PROVIDER_NAMES[provider]}")


def demo_script(graph: AgentGraph) -> Script:
    """What the simulated model says: greet, hand off to the first target if there is one,
    answer (after an HTTP tool call when the answering agent has one), and say goodbye (ending
    the call with ``end_call`` when the agent has it)."""
    first = graph.agent(graph.first_stage.agent_id)
    targets = graph.targets(graph.first_stage)
    greet = Step(on="text", when=f"Role: {first.role}", say="Thanks for calling. How can I help?")
    if not targets:
        return Script(
            [
                greet,
                _answer(graph, first, "I'd like some help, please.",
                        "Of course. Tell me a little more about what you need."),
                _goodbye(first),
            ]
        )  # fmt: skip
    second = targets[0].agent
    return Script(
        [
            greet,
            Step(
                on="caller",
                when=f"Role: {first.role}",
                hear="I'd like some advice on my portfolio.",
                say=f"Sure, let me transfer you to our {second.role.lower()}.",
                tool_call=ToolCallSpec(
                    HANDOFF_TOOL,
                    {
                        "target": second.id,
                        "reason": "The caller wants advice on their portfolio.",
                        "summary": "Caller asked for portfolio advice; no details given yet.",
                    },
                ),
            ),
            Step(
                on="text",
                when=f"Role: {second.role}",
                say=f"Hi, I'm the {second.role.lower()}. What would you like to know?",
            ),
            _answer(graph, second, "Should I diversify?",
                    "Yes. Spreading your savings across assets lowers your risk."),
            _goodbye(second),
        ]
    )  # fmt: skip


def _answer(graph: AgentGraph, agent: Agent, hear: str, say: str) -> Step:
    """The agent answers the caller, looking something up with its first HTTP tool if any."""
    when = f"Role: {agent.role}"
    tools = graph.http_tools(agent)
    if not tools:
        return Step(on="caller", when=when, hear=hear, say=say)
    call = ToolCallSpec(tools[0].name, demo_arguments(tools[0]))
    return Step(on="caller", when=when, hear=hear, say="Let me look that up.", tool_call=call,
                then_say=say)  # fmt: skip


def _goodbye(agent: Agent) -> Step:
    """The caller thanks the agent; it says goodbye, and ends the call if it can."""
    end = ToolCallSpec(END_CALL_TOOL, {"reason": "The caller has what they needed."})
    return Step(
        on="caller",
        when=f"Role: {agent.role}",
        hear="Thank you, that's all.",
        say="You're welcome. Goodbye!",
        tool_call=end if END_CALL_TOOL in agent.tools else None,
    )


def demo_arguments(tool: HttpTool) -> dict[str, Any]:
    """Arguments the simulated model passes to ``tool``: each required property of its schema,
    with the first ``enum`` or ``examples`` value if it has one, else a placeholder."""
    properties = tool.parameters.get("properties") or {}
    placeholders = {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    args: dict[str, Any] = {}
    for name in tool.parameters.get("required") or []:
        schema = properties.get(name) or {}
        examples = schema.get("enum") or schema.get("examples") or []
        kind = str(schema.get("type", ""))
        args[name] = examples[0] if examples else placeholders.get(kind, "demo")
    return args


def with_local_tools(graph: AgentGraph, base_url: str) -> AgentGraph:
    """The graph with every HTTP tool sent to ``base_url`` (same path), without its headers:
    the demo must not call (or send credentials to) the real APIs."""
    spec = graph.spec
    if not spec.tools:
        return graph
    tools = tuple(
        tool.model_copy(update={"url": base_url + (urlsplit(tool.url).path or "/"), "headers": {}})
        for tool in spec.tools
    )
    return AgentGraph(spec.model_copy(update={"tools": tools}), source=graph.source)


class EventPrinter:
    """Prints the bridge's call events as a readable timeline."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.handoff_ms: list[float] = []
        self.tools = 0
        self.end_reason = ""

    def __call__(self, name: str, fields: Mapping[str, Any]) -> None:
        at = time.monotonic() - self.started
        line = self._describe(name, fields)
        if line:
            print(f"{at:6.2f}s  {line}", flush=True)

    def _describe(self, name: str, f: Mapping[str, Any]) -> str | None:
        if name == "call.started":
            return f"call started        {f['call_id']} ({f['encoding']} audio)"
        if name == "call.connected":
            return f"model connected     {f['agent']} in {f['live_connect_ms']:.0f} ms"
        if name == "transcript" and f["speaker"] in ("caller", "agent"):
            who = "caller" if f["speaker"] == "caller" else f["agent_id"]
            cut = " (interrupted)" if f["interrupted"] else ""
            return f'{who:<19} "{f["text"]}"{cut}'
        if name == "handoff.completed":
            self.handoff_ms.append(float(f["reconnect_ms"]))
            how = "resumed with the handle" if f["resumed"] else "fresh session, re-seeded"
            return (
                f"HANDOFF             {f['from_agent']} -> {f['to_agent']}: {how}, "
                f"reconnect {f['reconnect_ms']:.1f} ms"
            )
        if name == "agent.interrupted":
            return "barge-in            playback cleared"
        if name == "tool.completed":
            self.tools += 1
            outcome = "ok" if f["ok"] else "failed"
            return f"TOOL                {f['tool']}: {outcome} in {f['ms']:.0f} ms"
        if name == "call.end_requested":
            return "END CALL            the agent ends the call after its goodbye"
        if name == "call.ended":
            self.end_reason = str(f["reason"])
            return f"call ended          {f['reason']} after {f['duration_s']:.1f} s"
        return None


def describe_record(record: Mapping[str, Any]) -> list[str]:
    """A few lines on a call record: what a CRM receiving it would see."""
    usage = record["usage"]
    seconds = record["duration_s"]
    length = "still open" if seconds is None else f"{seconds:.1f} s"
    return [
        f"{record['direction']} {record['carrier']} call {record['call_id']}, "
        f"{length}, ended: {record['end_reason']}",
        f"agents: {' -> '.join(record['agents'])}; handoffs: {len(record['handoffs'])}; "
        f"transcript: {len(record['transcript'])} lines",
        f"tool calls: {', '.join(t['name'] for t in record['tool_calls']) or 'none'}",
        f"tokens: {usage['input_tokens']} in, {usage['output_tokens']} out, "
        f"{usage['total_tokens']} in all",
    ]


async def _record_of(state: GatewayState, call_id: str) -> dict[str, Any] | None:
    records = state.records
    if records is None:
        return None
    for _ in range(250):  # the gateway ends its side of the call, then writes the record
        if not state.calls and not records.writing:
            break
        await asyncio.sleep(0.02)
    return await records.store.get(call_id)


@contextlib.asynccontextmanager
async def _temporary_directory() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="callbridge-demo-") as name:
        yield Path(name)


def describe_heard(pcm: bytes, graph: AgentGraph, rate: int = 8000) -> list[str]:
    """Which agent voice the caller heard when, from the pitch of 100 ms windows."""
    voices = {a.voice: a.id for a in graph.spec.agents}
    pitches = {voice: voice_pitch_hz(voice) for voice in voices}
    window = rate // 10 * 2
    spans: list[list[Any]] = []
    for start in range(0, len(pcm) - window + 1, window):
        chunk = pcm[start : start + window]
        if rms_dbfs(chunk) < -45:
            continue
        hz = dominant_frequency(chunk, rate)
        voice = min(pitches, key=lambda v: abs(pitches[v] - hz))
        if abs(pitches[voice] - hz) > 15:
            continue
        t = start / 2 / rate
        if spans and spans[-1][0] == voice and t - spans[-1][2] <= 0.25:
            spans[-1][2] = t + 0.1
        else:
            spans.append([voice, t, t + 0.1])
    return [f"{t0:6.2f}s-{t1:5.2f}s  {voices[v]} ({v}, {pitches[v]:.0f} Hz)" for v, t0, t1 in spans]


async def _until_interrupted() -> None:
    """Until SIGINT or SIGTERM (Ctrl-C): the demo's gateway then stops like any other."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def run_demo(
    *, agents_file: Path | None, out: Path, stay: bool = False, provider: Provider | None = None
) -> int:
    """One call through the real gateway; with ``stay``, the gateway then serves on (the
    console, browser calls against the simulator) until Ctrl-C. ``provider`` moves every
    agent to that provider's simulator."""
    configure_logging("warning", "console")
    graph = demo_agents(agents_file)
    if provider is not None:
        graph = with_provider(graph, provider)
    names = " and ".join(f"{PROVIDER_NAMES[p]}'s" for p in graph.providers)
    printer = EventPrinter()
    print("Callbridge demo: a simulated Twilio call through the real gateway, against the")
    print(f"built-in simulator of {names} model (no API key, nothing leaves this machine).")
    print(f"agents: {graph.source}\n")
    twilio = TwilioApiSimulator(auth_token=DEMO_TWILIO_TOKEN)
    admin_token = secrets.token_urlsafe(18)
    tls = generate_tls()
    script = demo_script(graph)
    async with (
        _temporary_directory() as records_dir,
        LiveSimulator(script=script, tls=tls) as sim,
        RealtimeSimulator(script=script, tls=tls) as realtime,
        ToolServer() as tools,
        serving(twilio.app) as twilio_base,
    ):
        graph = with_local_tools(graph, tools.url)
        for tool in graph.spec.tools:
            tools.respond(
                urlsplit(tool.url).path or "/", {"result": f"(a demo answer from {tool.name})"}
            )
        settings = Settings(
            _env_file=None,
            gemini_api_key="demo-key",
            gemini_base_url=sim.base_url,
            openai_api_key="demo-key",
            openai_base_url=realtime.base_url,
            twilio_auth_token=DEMO_TWILIO_TOKEN,
            twilio_api_base=twilio_base,
            log_level="warning",
            # The call's record, kept for the length of the demo (not a calls.db left behind).
            database_url=f"sqlite:///{records_dir}/calls.db",
            # The console's, for this demo only: it ends with it.
            admin_api_token=admin_token,
        )
        state = build_state(
            settings, graph, ssl_context=sim.tls.client_context(), observers=(printer,)
        )
        async with running_gateway(state) as gateway:
            simulators = {"gemini": sim.base_url, "openai": realtime.base_url}
            on = ", ".join(
                f"{PROVIDER_NAMES[p]} simulator on {simulators[p]}" for p in graph.providers
            )
            print(f"gateway on {gateway.url}, {on}")
            print(f"console: open {gateway.url}/console and log in with the admin token")
            print(f"         {admin_token} (this demo's own; it ends with the demo)")
            if not stay:
                print("         (gateway demo --stay keeps it up after the call)")
            print()
            caller_says: list[Segment] = [
                Silence(3.0),
                Tone(CALLER_HZ, 1.2, -15),
                Silence(7.0),
                Tone(CALLER_HZ, 1.0, -15),
                Silence(6.0),
                Tone(CALLER_HZ, 0.8, -15),
            ]
            printer.started = time.monotonic()
            caller = TwilioCaller(
                gateway.url, audio=render(caller_says), linger_s=6.0,
                auth_token=DEMO_TWILIO_TOKEN, api=twilio,
            )  # fmt: skip
            result = await caller.run()
            record = await _record_of(state, result.call_sid)
            if stay:
                await asyncio.to_thread(result.write_wav, out)
                print(f"\nThe call is over; wrote what the caller heard to {out}.")
                print(f"The gateway stays up: open {gateway.url}/console to read the call's")
                print("record or talk to the agents from the browser. Ctrl-C stops it.")
                await _until_interrupted()
    await asyncio.to_thread(result.write_wav, out)
    print("\nWhat the caller heard (by voice pitch):")
    for line in describe_heard(result.heard_pcm(), graph):
        print(f"  {line}")
    if printer.handoff_ms:
        print(f"\nhandoff reconnect time: {', '.join(f'{ms:.1f} ms' for ms in printer.handoff_ms)}")
    if result.after_stream:
        print(f"after the stream, Twilio ran: {', '.join(result.after_stream)}")
    print(f"wrote what the caller heard to {out}")
    if record is not None:
        print("\nThe call's record (GET /calls/{id}, gateway calls show):")
        for line in describe_record(record):
            print(f"  {line}")
    for violation in result.violations:
        print(f"PROTOCOL VIOLATION: {violation}")
    final = (
        graph.targets(graph.first_stage)[0].agent
        if graph.targets(graph.first_stage)
        else (graph.agent(graph.first_stage.agent_id))
    )
    problems = [
        bool(graph.targets(graph.first_stage)) and not printer.handoff_ms,
        bool(graph.http_tools(final)) and not printer.tools,
        END_CALL_TOOL in final.tools and printer.end_reason != "agent_ended",
    ]
    return 1 if result.violations or any(problems) else 0
