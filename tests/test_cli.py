"""The ``gateway`` command as users run it: real processes, real ports, real signals."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.twilio import TwilioCaller
from callsim.live.records import ConnectionRecord as LiveConnectionRecord
from callsim.twilio.webhook import twilio_signature

ROOT = Path(__file__).resolve().parent.parent
SCRUBBED = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL", "PUBLIC_URL", "AGENTS_FILE",
            "GEMINI_MODEL", "LOG_FORMAT", "LOG_LEVEL", "HOST", "PORT", "CARRIERS",
            "TWILIO_AUTH_TOKEN", "TELNYX_PUBLIC_KEY", "ALLOW_UNSIGNED_WEBHOOKS",
            "LOG_TRANSCRIPTS", "TELNYX_CODEC", "TELNYX_TEXML", "TIMEZONE",
            "DTMF_INTERDIGIT_MS", "IDLE_PROMPT_S", "IDLE_HANGUP_S", "ORDERS_API_TOKEN")  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(extra)
    return env


def gateway(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=120,
    )


def test_check_prints_the_agent_graph(tmp_path: Path) -> None:
    done = gateway("check", str(ROOT / "agents.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "start triage [agent-triage] -> hands off to: agent-advisor" in done.stdout


def test_check_reports_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "agents.yaml"
    text = (ROOT / "agents.yaml").read_text()
    bad.write_text(text.replace("agent_id: agent-advisor", "agent_id: x"))
    done = gateway("check", cwd=tmp_path)  # AGENTS_FILE defaults to ./agents.yaml
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: agents.yaml: pipeline[1].agent_id: unknown agent 'x'; "
        "agents are: agent-triage, agent-advisor"
    )
    assert "Traceback" not in done.stderr


ACTING = """\
  - name: lookup_order
    description: Look up an order's status by its number.
    parameters:
      type: object
      properties:
        order_id: {type: string, description: "The order number, digits only"}
      required: [order_id]
    url: https://api.example.com/orders/lookup
    headers:
      Authorization: "Bearer ${ORDERS_API_TOKEN}"
"""


def _acting_file(tmp_path: Path) -> Path:
    """The repository example plus an HTTP tool that the triage agent enables, a transfer
    list without ``transfer_call`` (a warning) and a route."""
    text = (ROOT / "agents.yaml").read_text()
    text = text.replace(  # the triage agent's (the first) tools
        "    tools: [end_call]\n",
        '    tools: [lookup_order, end_call]\n    transfers: {billing: "+15551234567"}\n',
        1,
    )
    text = text.replace("\nagents:\n", "\n" + ACTING + "agents:\n")  # one more HTTP tool
    path = tmp_path / "acting.yaml"
    path.write_text(text + 'routes:\n  - {number: "+15550001111", phase: advising}\n')
    return path


def test_check_prints_tools_routes_and_warnings_but_no_secret(tmp_path: Path) -> None:
    token = "tok-cli-5e1d0b9c"
    done = gateway("check", str(_acting_file(tmp_path)), cwd=tmp_path, ORDERS_API_TOKEN=token)
    assert done.returncode == 0, done.stderr
    assert "    tools: lookup_order, end_call\n    transfers: billing\n" in done.stdout
    assert "lookup_order: POST https://api.example.com/orders/lookup (headers: Authorization)" in (
        done.stdout
    )
    assert "+15550001111 -> advising [agent-advisor]" in done.stdout
    assert "warning: agents[0].transfers: unused, transfer_call is not in this agent's tools" in (
        done.stdout
    )
    assert token not in done.stdout + done.stderr


def test_check_stops_on_an_unset_variable_with_one_line(tmp_path: Path) -> None:
    path = _acting_file(tmp_path)
    done = gateway("check", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {path}: tools[1].headers.Authorization: ${{ORDERS_API_TOKEN}} is not set in "
        "the environment"
    )


def test_serve_without_a_key_says_how_to_set_one(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "GEMINI_API_KEY is not set" in done.stderr
    assert "gateway serve --simulator" in done.stderr


def test_invalid_settings_stop_start_up_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway("serve", cwd=tmp_path, GEMINI_API_KEY="k" * 20, PUBLIC_URL="gw.example.com")
    assert done.returncode == 2
    assert done.stderr.startswith("error: PUBLIC_URL: must be an http(s) base URL")
    assert "k" * 20 not in done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "70000"}, "error: PORT: "),
        ({"PORT": "0"}, "error: PORT: "),
        ({"CARRIERS": "twilio,fax"}, "error: CARRIERS: unknown carrier 'fax'"),
        ({"MAX_PENDING_STREAMS": "0"}, "error: MAX_PENDING_STREAMS: "),
        ({"ALLOW_UNSIGNED_WEBHOOKS": "perhaps"}, "error: ALLOW_UNSIGNED_WEBHOOKS: "),
        ({"LOG_TRANSCRIPTS": "perhaps"}, "error: LOG_TRANSCRIPTS: "),
    ],
)
def test_every_invalid_setting_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway("serve", cwd=tmp_path, GEMINI_API_KEY="k" * 20, **env)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [("serve",), ("serve", "--simulator"), ("demo",), ("check",)])
def test_a_port_that_is_not_a_number_stops_every_command_with_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway(*command, cwd=tmp_path, GEMINI_API_KEY="k" * 20, PORT="abc")
    assert done.returncode == 2
    assert done.stderr.startswith("error: PORT: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("port", ["70000", "0", "-1", "http", "8080.5"])
@pytest.mark.parametrize("command", ["serve", "simulator"])
def test_cli_ports_are_validated_1_to_65535(tmp_path: Path, port: str, command: str) -> None:
    done = gateway(command, "--port", port, cwd=tmp_path)
    assert done.returncode == 2
    assert "argument --port:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "check"])
def test_l16_is_refused_while_texml_is_served(tmp_path: Path, command: str) -> None:
    """TeXML's <Stream bidirectionalCodec> documents no L16; Call Control does, so L16 starts
    when TeXML is off (or Telnyx not served at all)."""
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    done = gateway(command, cwd=tmp_path, TELNYX_CODEC="L16")
    assert done.returncode == 2
    assert done.stderr.startswith("error: TELNYX_CODEC: L16 is documented for Telnyx Call Control")
    assert "PCMU, PCMA, G722" in done.stderr and "TELNYX_TEXML=false" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    for env in ({"TELNYX_TEXML": "false"}, {"CARRIERS": "twilio"}):
        allowed = gateway(command, cwd=tmp_path, TELNYX_CODEC="l16", **env)
        if command == "check":
            assert allowed.returncode == 0, allowed.stderr
        else:  # past the settings: stopped by the next check, before listening
            assert allowed.returncode == 2
            assert "GEMINI_API_KEY is not set" in allowed.stderr


def test_serve_refuses_to_start_with_unverified_webhooks(tmp_path: Path) -> None:
    """The default configuration must not let strangers open calls: no verification key for
    a served carrier, no start (whatever GEMINI_BASE_URL says)."""
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    key = {"GEMINI_API_KEY": "k" * 20, "GEMINI_BASE_URL": "https://127.0.0.1:9"}
    both = gateway("serve", cwd=tmp_path, **key)
    twilio_only = gateway("serve", cwd=tmp_path, CARRIERS="twilio", **key)
    telnyx_half = gateway(
        "serve", cwd=tmp_path, TWILIO_AUTH_TOKEN="t" * 32, **key
    )  # Twilio verified, Telnyx still served and not
    for done in (both, twilio_only, telnyx_half):
        assert done.returncode == 2
        assert done.stderr.startswith("error: refusing to serve")
        assert "ALLOW_UNSIGNED_WEBHOOKS=true" in done.stderr and "Traceback" not in done.stderr
        assert "t" * 32 not in done.stderr
    assert "TWILIO_AUTH_TOKEN" in both.stderr and "TELNYX_PUBLIC_KEY" in both.stderr
    assert "TWILIO_AUTH_TOKEN" in twilio_only.stderr
    assert "TELNYX_PUBLIC_KEY" not in twilio_only.stderr
    assert "TELNYX_PUBLIC_KEY" in telnyx_half.stderr
    assert "TWILIO_AUTH_TOKEN" not in telnyx_half.stderr


async def test_allow_unsigned_webhooks_starts_with_a_warning_naming_the_risk(
    tmp_path: Path,
) -> None:
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    port = _free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a real server process, polled below
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=_env(GEMINI_API_KEY="k" * 20, ALLOW_UNSIGNED_WEBHOOKS="true",
                               CARRIERS="twilio"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:
            await _wait_healthy(http, f"http://127.0.0.1:{port}", proc)
            telnyx = await http.post(f"http://127.0.0.1:{port}/telnyx/voice", data={"a": "b"})
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
    assert telnyx.status_code == 404  # CARRIERS=twilio: no Telnyx routes at all
    (warning,) = [line for line in stderr.splitlines() if "unsigned_webhooks_allowed" in line]
    assert '"level": "warning"' in warning
    assert "spend your" in warning and "model quota" in warning and "TWILIO_AUTH_TOKEN" in warning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if (await http.get(url + "/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "gateway did not come up"
        assert proc.poll() is None, proc.communicate()[1]
        await asyncio.sleep(0.1)


async def test_sigterm_drains_live_calls_then_exits_0(tmp_path: Path) -> None:
    """serve --simulator answers a call; SIGTERM mid-call: readyz 503 at once, new calls get a
    busy message, the live call runs to its end, then the process exits 0."""
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    port = _free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a real server process, polled below
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, env=_env(LOG_FORMAT="json", DRAIN_TIMEOUT="30"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            await _wait_healthy(http, url, proc)
            assert (await http.get(url + "/readyz")).status_code == 200
            audio = render([Silence(4.0), Tone(300, 0.6), Silence(1.5)])
            call = asyncio.create_task(TwilioCaller(url, audio=audio, linger_s=0.2).run())
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await http.get(url + "/readyz")
            busy = await http.post(url + "/twilio/voice", data={"CallSid": "CA" + "3" * 32})
            result = await call
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ready.status_code == 503
    assert "<Connect>" not in busy.text and "<Say>" in busy.text
    assert result.violations == []
    assert result.closed_by == "caller"  # the live call was not cut
    assert result.media_bytes_received > 8000  # the greeting, at least a second of it
    assert proc.returncode == 0, stderr
    assert '"event": "gateway.draining"' in stderr
    assert '"event": "call.ended"' in stderr  # JSON logs, one line per event
    assert '"call_id": "CA' in stderr


@pytest.mark.timeout(90)
def test_demo_runs_a_call_with_a_handoff_a_tool_and_an_end_call(tmp_path: Path) -> None:
    done = gateway("demo", "--out", str(tmp_path / "heard.wav"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The console, to watch the call live (with this demo's own admin token).
    assert re.search(r"console: open http://127\.0\.0\.1:\d+/console and log in", done.stdout)
    assert "HANDOFF             agent-triage -> agent-advisor: resumed" in done.stdout
    assert "agent-advisor (Charon" in done.stdout
    # The advisor looks something up (at the demo's local stand-in), then ends the call.
    assert "TOOL                get_quote: ok" in done.stdout
    assert "call ended          agent_ended" in done.stdout
    assert "after the stream, Twilio ran: Hangup" in done.stdout
    assert (tmp_path / "heard.wav").stat().st_size > 8000 * 2 * 10
    # The call's record, from a database the demo does not leave behind.
    assert "ended: agent_ended" in done.stdout
    assert "agents: agent-triage -> agent-advisor; handoffs: 1" in done.stdout
    assert "tool calls: handoff_conversation, get_quote, end_call" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heard.wav"]


USER_AGENTS = """\
agents:
  - id: front-desk
    role: Front desk
    system_prompt: Greet and route.
    voice: kore
    greeting: Greet the caller.
  - id: billing
    role: Billing specialist
    system_prompt: Answer billing questions.
    voice: Puck
pipeline:
  - phase: desk
    agent_id: front-desk
    next: bills
  - phase: bills
    agent_id: billing
"""


@pytest.mark.timeout(90)
def test_demo_uses_the_users_own_agents_file_and_moves_it_to_openai(tmp_path: Path) -> None:
    """Edit agents.yaml, run the demo, hear the edit: ./agents.yaml is what the demo runs; and
    ``--provider openai`` runs the same agents on the Realtime simulator, in OpenAI's voices."""
    (tmp_path / "agents.yaml").write_text(USER_AGENTS)
    done = gateway("demo", "--provider", "openai", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agents: agents.yaml, on OpenAI" in done.stdout
    assert "OpenAI simulator on https://127.0.0.1:" in done.stdout
    # Two voices: the handoff opens a new Realtime session told the conversation.
    assert "HANDOFF             front-desk -> billing: fresh session" in done.stdout
    assert "front-desk (alloy" in done.stdout and "billing (ash" in done.stdout


def test_demo_picks_agents_file_then_dot_agents_yaml_then_the_bundled_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callsim.demo import demo_agents, demo_script

    monkeypatch.chdir(tmp_path)
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    assert demo_agents(None).source == "bundled example agents.yaml"
    (tmp_path / "agents.yaml").write_text(USER_AGENTS)
    assert demo_agents(None).source == "agents.yaml"
    alone = tmp_path / "alone.yaml"
    single_stage = "pipeline:\n  - {phase: desk, agent_id: front-desk}\n"
    alone.write_text(USER_AGENTS.split("pipeline:")[0] + single_stage)
    monkeypatch.setenv("AGENTS_FILE", str(alone))
    graph = demo_agents(None)
    assert graph.source == str(alone)
    # No agent to hand off to: the demo still runs, scripted without a handoff.
    assert all(step.tool_call is None for step in demo_script(graph).steps)
    assert demo_agents(tmp_path / "agents.yaml").source == str(tmp_path / "agents.yaml")


async def _run(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=cwd, env=_env(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_call_places_a_twilio_call_and_writes_what_was_heard(tmp_path: Path) -> None:
    from callsim.wav import write_wav
    from gateway.audio.analysis import sine_pcm16
    from tests.harness import agents, running

    await asyncio.to_thread(write_wav, tmp_path / "in.wav", sine_pcm16(440, 0.8, 16000), 16000)
    async with running(graph=agents(agent_triage={"greeting": "Hi."})) as h:
        code, out, err = await _run(
            "call", h.gateway.url, "--wav", str(tmp_path / "in.wav"),
            "--out", str(tmp_path / "heard.wav"), "--linger", "3", cwd=tmp_path,
        )  # fmt: skip
        received = len(h.sim.connections[0].audio_in)
    assert code == 0, out + err
    assert "VIOLATION" not in out
    assert (tmp_path / "heard.wav").stat().st_size > 8000  # the greeting was heard
    assert received >= 0.8 * 16000 * 2  # the WAV reached the model


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_serve_reaches_a_separate_model_endpoint_via_base_url_and_ssl_cert_file(
    tmp_path: Path, provider: str
) -> None:
    """The deployment path: GEMINI_BASE_URL (OPENAI_BASE_URL) + SSL_CERT_FILE; and at
    LOG_LEVEL=debug, with every library logging, no key, token, signature, audio, transcript
    or whole number in the log."""
    from callsim.live.server import LiveSimulator
    from callsim.realtime.server import RealtimeSimulator

    secret = "AIzaSy-not-a-real-key-0123456789abcdef"
    others = {"TWILIO_AUTH_TOKEN": "twilio-token-secret-abcdef012345",
              "GATEWAY_SECRET": "gateway-secret-value-abcdef012345",
              "TELNYX_API_KEY": "KEY0123456789telnyx-secret-abcdef"}  # fmt: skip
    agents_yaml = (ROOT / "agents.yaml").read_text()
    if provider == "openai":
        secret = "sk-proj-not-a-real-key-0123456789abcdef"
        agents_yaml = agents_yaml.replace("model: gemini-2.5-flash-native-audio-preview-12-2025",
                                          "provider: openai")  # fmt: skip
        agents_yaml = agents_yaml.replace("voice: Aoede", "voice: alloy")
        agents_yaml = agents_yaml.replace("voice: Charon", "voice: cedar")
        assert "provider: openai" in agents_yaml
    (tmp_path / "agents.yaml").write_text(agents_yaml)
    port = _free_port()
    sim = LiveSimulator() if provider == "gemini" else RealtimeSimulator()
    async with sim:
        await asyncio.to_thread(sim.tls.write_ca, tmp_path / "ca.pem")
        endpoint = {"GEMINI_API_KEY": secret, "GEMINI_BASE_URL": sim.base_url}
        if provider == "openai":
            endpoint = {"OPENAI_API_KEY": secret, "OPENAI_BASE_URL": sim.base_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
            cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
            env=_env(**endpoint, **others, SSL_CERT_FILE=str(tmp_path / "ca.pem"),
                     LOG_LEVEL="debug", CARRIERS="twilio"),
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as http:
                for _ in range(200):
                    try:
                        if (await http.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            result = await TwilioCaller(
                url,
                audio=render([Silence(1.0), Tone(300, 0.6), Silence(2.5)]),
                linger_s=0.1,
                auth_token=others["TWILIO_AUTH_TOKEN"],
            ).run()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        conn = sim.connections[0]
    assert result.violations == []
    assert result.media_bytes_received > 0
    if isinstance(conn, LiveConnectionRecord):
        assert conn.api_key == secret and conn.api_version == "v1beta"
    else:
        assert conn.authorized and conn.input_format == {"type": "audio/pcmu"}
    assert proc.returncode == 0
    logs = err.decode()
    assert '"event": "call.ended"' in logs
    stream_token = result.parameters["token"]  # a credential too, for its few minutes
    assert result.twiml_stream_url is not None and stream_token in result.twiml_stream_url
    # The upgrade's signature never changes for its URL: logged, it could be replayed.
    upgrade_signature = twilio_signature(others["TWILIO_AUTH_TOKEN"], result.twiml_stream_url, {})
    for value in (secret, *others.values(), stream_token, upgrade_signature):
        assert value not in logs
    assert "/twilio/stream/[redacted]" in logs  # uvicorn's own "WebSocket …" line, scrubbed
    assert not re.search(r"[A-Za-z0-9+/]{100,}", logs)  # no base64 audio
    assert "4155550123" not in logs and '"caller": "***0123"' in logs  # numbers masked
    transcripts = [json.loads(line) for line in logs.splitlines() if '"transcript"' in line]
    assert transcripts and all("text" not in t for t in transcripts)
    assert "Traceback" not in logs


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_simulator_takes_a_browser_call_and_stops_with_a_console_watching(
    tmp_path: Path, workers: int
) -> None:
    """The console's browser call works against ``serve --simulator`` (the greeting comes back
    as 24 kHz PCM, the call shows in the live feed), and SIGTERM stops the server at once
    although a console's event stream is open (it would otherwise hold the shutdown).

    With two workers the feed shows the calls of the worker serving it (README, Scaling), which
    may not be the one the call reached: there, only the call and the quick stop are checked."""
    (tmp_path / "agents.yaml").write_text((ROOT / "agents.yaml").read_text())
    port = _free_port()
    token = "console-token-0123456789abcdef"
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a real server process, polled below
        [sys.executable, "-m", "gateway", "serve", "--simulator", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=tmp_path, env=_env(LOG_FORMAT="json", ADMIN_API_TOKEN=token, WORKERS=str(workers)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {token}"}
    feed: list[str] = []
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _wait_healthy(http, url, proc)
            async with http.stream("GET", url + "/console/api/live", headers=bearer) as events:

                async def read_feed() -> None:
                    async for line in events.aiter_lines():
                        feed.append(line)

                reader = asyncio.create_task(read_feed())
                issued = (await http.post(url + "/web/calls", headers=bearer)).json()
                received = 0
                async with websockets.connect(
                    issued["stream_url"], additional_headers=bearer
                ) as ws:
                    ids = {"streamSid": issued["stream_id"], "callSid": issued["call_id"]}
                    await ws.send(json.dumps({"event": "start", "start": ids}))
                    while received < 24_000 * 2:  # a second of the greeting, at 24 kHz
                        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if message["event"] == "media":
                            received += len(base64.b64decode(message["media"]["payload"]))
                    await ws.send(json.dumps({"event": "stop"}))
                for _ in range(100 if workers == 1 else 10):
                    if any('"end_reason"' in line for line in feed):
                        break
                    await asyncio.sleep(0.05)
                stopping = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
                stopped_s = time.monotonic() - stopping
                await reader
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stopped_s < 5  # not the 10 s grace an open response would have held it for
    assert received >= 24_000 * 2
    if workers == 1:
        assert any(issued["call_id"] in line and '"carrier":"web"' in line for line in feed)
        assert any(
            '"end_reason":"caller_hangup"' in line or "caller_hung_up" in line for line in feed
        )
