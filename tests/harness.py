"""End-to-end harness: the real gateway (uvicorn on a free port), the real google-genai SDK
pointed at the Live simulator over TLS (and, for agents on OpenAI, the real openai SDK pointed
at the Realtime simulator), and a caller simulator speaking the real protocol of the carrier
under test (Twilio; Telnyx TeXML or Call Control, with the fake Call Control API).

Nothing here is mocked: a test drives a whole call through real sockets and then asserts on
what each peer recorded (the simulator's setup/audio/tool responses, the caller's heard audio
and clear/mark timings, the gateway's call events).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from callsim.callers.audio import Segment, render
from callsim.callers.result import CallResult
from callsim.callers.telnyx import TelnyxCaller
from callsim.callers.twilio import TwilioCaller
from callsim.demo import with_provider
from callsim.live.script import Script, Step
from callsim.live.server import LiveSimulator
from callsim.realtime.server import RealtimeSimulator
from callsim.telnyx.api import TelnyxApiSimulator
from callsim.twilio.api import TwilioApiSimulator
from gateway.agents import AgentGraph, Provider, load_agents, parse_agents
from gateway.server import RunningGateway, build_state, running_gateway
from gateway.settings import Settings
from tests.servers import serving as serving  # the e2e tests serve fake carrier APIs with it

API_KEY = "test-api-key-0123456789"
TELNYX_API_KEY = "KEY-telnyx-test-0123456789"
#: The auth token of the fake Twilio REST API that ``running(carrier_api=True)`` serves.
TWILIO_AUTH_TOKEN = "twilio-auth-token-harness-0123"
#: What ``running(outbound=True)`` configures for ``POST /calls``: the admin API's token, the
#: Twilio account and the Telnyx Call Control application calls are placed through.
ADMIN_TOKEN = "admin-token-harness-0123456789"
TWILIO_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TELNYX_CONNECTION_ID = "1234567890123456789"


@dataclass(frozen=True)
class Carrier:
    """Who carries the call in a test: the carrier, the stream codec (TELNYX_CODEC), (Telnyx)
    the mode, and the call leg's own codec (None: the stream codec, a leg that needs no
    transcoding)."""

    name: str = "twilio"
    codec: str = "PCMU"
    mode: str = "texml"
    call_codec: str | None = None

    @property
    def rate(self) -> int:
        """Sample rate of what the caller hears and says (on a leg in the stream codec)."""
        return 16000 if self.codec in ("G722", "L16") else 8000

    def __str__(self) -> str:
        if self.name == "twilio":
            return "twilio"
        on = f"-on-{self.call_codec}" if self.call_codec else ""
        return f"telnyx-{self.mode}-{self.codec}{on}"


TWILIO = Carrier()
#: Every carrier path: Twilio, and Telnyx TeXML for each of its codecs plus Call Control (L16
#: is Call Control's only: TeXML does not document it).
ALL_CARRIERS = [
    TWILIO,
    Carrier("telnyx", "PCMU"),
    Carrier("telnyx", "PCMA"),
    Carrier("telnyx", "G722"),
    Carrier("telnyx", "L16", "call-control"),
    Carrier("telnyx", "PCMU", "call-control"),
]
#: One of each kind, for behaviour that does not depend on the codec.
CARRIER_KINDS = [TWILIO, Carrier("telnyx", "PCMU"), Carrier("telnyx", "G722", "call-control")]


@dataclass
class Harness:
    sim: LiveSimulator
    gateway: RunningGateway
    graph: AgentGraph
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    carrier: Carrier = TWILIO
    #: The fake Telnyx API: always for Call Control, for TeXML with ``carrier_api=True``.
    telnyx_api: TelnyxApiSimulator | None = None
    #: The fake Twilio REST API (``carrier_api=True``); every call registers with it.
    twilio_api: TwilioApiSimulator | None = None
    #: The OpenAI Realtime simulator, when an agent runs on OpenAI.
    realtime: RealtimeSimulator | None = None

    def named(self, name: str) -> list[dict[str, Any]]:
        """Fields of every call event with this name, in order."""
        return [fields for _, event, fields in self.events if event == name]

    async def call(
        self, segments: Sequence[Segment] = (), *, linger_s: float = 1.0, **kwargs: Any
    ) -> CallResult:
        """Place one call; every protocol violation by the gateway fails the test."""
        caller: TwilioCaller | TelnyxCaller
        if self.carrier.name == "twilio":
            audio = render(segments)
            if self.twilio_api is not None:  # the gateway checks signatures under its token
                kwargs.setdefault("auth_token", TWILIO_AUTH_TOKEN)
                kwargs.setdefault("api", self.twilio_api)
            caller = TwilioCaller(self.gateway.url, audio=audio, linger_s=linger_s, **kwargs)
        else:
            kwargs.setdefault("call_codec", self.carrier.call_codec or self.carrier.codec)
            caller = TelnyxCaller(
                self.gateway.url,
                speech=segments,
                linger_s=linger_s,
                mode=self.carrier.mode,  # type: ignore[arg-type]
                api=self.telnyx_api,
                **kwargs,
            )
        result = await caller.run()
        await self.calls_finished()
        result.raise_for_violations()
        return result

    async def calls_finished(self, within_s: float = 5.0) -> None:
        """Wait until the gateway has torn down every call."""
        deadline = time.monotonic() + within_s
        while self.gateway.state.calls:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.gateway.state.calls)} call(s) still running")
            await asyncio.sleep(0.01)


def agents(*, provider: Provider | None = None, **changes: Any) -> AgentGraph:
    """The example graph with fields changed: ``agent_triage={...}`` updates the agent with id
    ``agent-triage``, ``stage_advising={...}`` the pipeline stage with phase ``advising``.
    ``provider`` is the file's (on ``openai`` the model and the Gemini voices go, for that
    provider's defaults)."""
    from tests.test_agents import BASE

    data = yaml.safe_load(yaml.safe_dump(BASE))
    if provider is not None and provider != "gemini":
        data["provider"] = provider
        del data["model"]
        for agent in data["agents"]:
            del agent["voice"]
    for agent in data["agents"]:
        agent.update(changes.get(agent["id"].replace("-", "_"), {}))
    for stage in data["pipeline"]:
        stage.update(changes.get("stage_" + stage["phase"], {}))
    return parse_agents(yaml.safe_dump(data))


@contextlib.asynccontextmanager
async def running(
    *,
    steps: Sequence[Step] = (),
    graph: AgentGraph | None = None,
    sim_options: dict[str, Any] | None = None,
    carrier: Carrier = TWILIO,
    carrier_api: bool = False,
    outbound: bool = False,
    provider: Provider | None = None,
    realtime_options: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """The gateway, the Live simulator and (Call Control, or any carrier with ``carrier_api``)
    the carrier's fake REST API, the gateway pointed at it: ``Harness.twilio_api`` (Twilio;
    the gateway then also checks signatures, which ``Harness.call`` makes) or
    ``Harness.telnyx_api`` (Telnyx, also TeXML's update call). Calls placed through
    ``Harness.call`` register with it, so an update ends their stream as on the carrier.

    ``outbound``: both carriers' fake APIs, and the settings ``POST /calls`` needs
    (:data:`ADMIN_TOKEN`, :data:`TWILIO_ACCOUNT_SID`, :data:`TELNYX_CONNECTION_ID`; a test's
    own ``settings`` win); the callees of the calls placed are the fakes' (``callee``).

    ``provider`` moves every agent to that provider (``openai``: the Realtime simulator, with
    ``realtime_options``, speaks the steps; a graph that mixes providers gets both)."""
    # With ``agents_file`` (a reload test) the gateway starts on that file, as it would
    # serve; otherwise on the example graph, where by default no agent speaks first, so a
    # test's script alone decides what is said.
    if graph is None and "agents_file" in settings:
        graph = load_agents(settings["agents_file"])
    graph = graph or agents(agent_triage={"greeting": ""})
    if provider is not None:
        graph = with_provider(graph, provider)
    async with contextlib.AsyncExitStack() as stack:
        telnyx_api = twilio_api = None
        if (carrier.name == "twilio" and carrier_api) or outbound:
            twilio_api = TwilioApiSimulator(auth_token=TWILIO_AUTH_TOKEN)
            base = await stack.enter_async_context(serving(twilio_api.app))
            settings.update(twilio_auth_token=TWILIO_AUTH_TOKEN, twilio_api_base=base)
        if carrier.name == "telnyx":
            settings.setdefault("telnyx_codec", carrier.codec)
            if carrier.codec == "L16":  # TeXML does not document it: serve Call Control alone
                settings.setdefault("telnyx_texml", False)
        if (carrier.name == "telnyx" and (carrier.mode == "call-control" or carrier_api)) or (
            outbound
        ):
            telnyx_api = await stack.enter_async_context(
                TelnyxApiSimulator(api_key=TELNYX_API_KEY, connection_id=TELNYX_CONNECTION_ID)
            )
            settings.update(telnyx_api_key=TELNYX_API_KEY, telnyx_api_base=telnyx_api.base_url)
        if outbound:
            settings.setdefault("admin_api_token", ADMIN_TOKEN)
            settings.setdefault("twilio_account_sid", TWILIO_ACCOUNT_SID)
            settings.setdefault("telnyx_connection_id", TELNYX_CONNECTION_ID)
        async with _running(steps, graph, sim_options, realtime_options, settings) as harness:
            harness.carrier = carrier
            harness.telnyx_api = telnyx_api
            harness.twilio_api = twilio_api
            try:
                yield harness
            finally:  # before the harness counts the tasks left: a failed test's callees
                for api in (twilio_api, telnyx_api):
                    if api is not None:
                        await api.end_callees()


@contextlib.asynccontextmanager
async def _running(
    steps: Sequence[Step],
    graph: AgentGraph,
    sim_options: dict[str, Any] | None,
    realtime_options: dict[str, Any] | None,
    settings: dict[str, Any],
) -> AsyncIterator[Harness]:
    script = Script(steps)  # one for both simulators: a step one of them used is used up
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(LiveSimulator(script=script, **(sim_options or {})))
        realtime = None
        if "openai" in graph.providers:
            realtime = await stack.enter_async_context(
                RealtimeSimulator(script=script, tls=sim.tls, **(realtime_options or {}))
            )
            settings.setdefault("openai_api_key", API_KEY)
            settings.setdefault("openai_base_url", realtime.base_url)
        config = Settings(
            _env_file=None,
            gemini_api_key=API_KEY,
            gemini_base_url=sim.base_url,
            **settings,
        )
        harness_events: list[tuple[float, str, dict[str, Any]]] = []

        def observe(name: str, fields: Any) -> None:
            harness_events.append((time.monotonic(), name, dict(fields)))

        state = build_state(
            config, graph, ssl_context=sim.tls.client_context(), observers=(observe,)
        )
        async with running_gateway(state) as gateway:
            baseline = asyncio.all_tasks()
            harness = Harness(sim, gateway, graph, harness_events, realtime=realtime)
            yield harness
            await harness.calls_finished()
            await _no_tasks_left_beyond(baseline)


async def _no_tasks_left_beyond(baseline: set[asyncio.Task[Any]], within_s: float = 3.0) -> None:
    """Every task a call started (bridge, Live session, SDK socket) must be gone after it."""
    deadline = time.monotonic() + within_s
    while True:
        extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
        # The simulator's own per-connection handlers finish once the gateway has closed them.
        if not extra:
            return
        if time.monotonic() > deadline:
            names = sorted(t.get_name() + ": " + repr(t.get_coro()) for t in extra)
            raise AssertionError("tasks outlived their call:\n" + "\n".join(names))
        await asyncio.sleep(0.02)
