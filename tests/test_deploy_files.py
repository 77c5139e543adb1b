"""The deployment files agree with the gateway and with each other, checked by reading them.

No Docker engine or cluster is available here, so the contracts between files are what can be
held: probe paths are the gateway's routes, environment names are settings the gateway reads,
ports line up from container to Service to proxy, a replica is given longer to stop than it may
spend draining, the autoscaler and the disruption budget select the Deployment's pods. A typo in
any of these deploys cleanly and fails only in production, which is why it is checked here. The
nginx config is also parsed by nginx itself (``nginx -t``) when Debian's nginx is installed;
``tests/test_replicas.py`` then runs it in front of real replicas.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.agents import parse_agents
from gateway.security import StreamTokens
from gateway.settings import Settings
from gateway.web.telnyx import STREAM_PATH as TELNYX_STREAM
from gateway.web.twilio import STREAM_PATH as TWILIO_STREAM
from tests.test_cli import ROOT
from tests.test_replicas import NGINX, nginx_command, write_nginx_files

DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "gateway.conf"
K8S = DEPLOY / "k8s"
#: After DRAIN_TIMEOUT the gateway ends the remaining calls and gives them 5 s to close, then
#: uvicorn's graceful shutdown may take 10 s more (gateway/server.py): a stop must allow both.
STOP_AFTER_DRAIN_S = 5 + 10
WEBHOOKS = ("/twilio/voice", "/telnyx/voice", "/telnyx/call-control")
SECRET_SETTINGS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "TELNYX_API_KEY",
                   "TWILIO_AUTH_TOKEN",
                   "GATEWAY_SECRET", "DATABASE_URL", "CALL_RECORDS_SECRET",
                   "ADMIN_API_TOKEN")  # fmt: skip


def setting_names() -> set[str]:
    """Every environment variable the gateway reads: its settings, their aliases, HOST, PORT."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        names.add(name.upper())
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(choice) for choice in choices)
    return names


def seconds(duration: str | int | float) -> float:
    """A compose duration (``150s``, ``2m30s``, ``1h``) or a plain number, in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``256Mi``, ``1Gi``) as a plain number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?", str(value))
    assert match, f"bad quantity {value!r}"
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(match.group(1)) * scale[match.group(2)]


# --- nginx config, as a tree -------------------------------------------------------------------


@dataclass
class Directive:
    """One nginx directive; a block (``server {…}``) has children."""

    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.children if d.name == name]

    def one(self, name: str, *args: str) -> Directive:
        found = [d for d in self.all(name) if list(d.args[: len(args)]) == list(args)]
        assert len(found) == 1, f"expected one `{name} {' '.join(args)}`, found {len(found)}"
        return found[0]

    def value(self, name: str) -> list[str]:
        return self.one(name).args

    def walk(self) -> Iterator[Directive]:
        for child in self.children:
            yield child
            yield from child.walk()


def parse_nginx(text: str) -> Directive:
    """Enough of nginx's syntax for this file: words, quoted strings, comments, blocks."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};]+', text)
    root = Directive("main", [])
    stack, words = [root], list[str]()
    for token in tokens:
        if token.startswith("#"):
            continue
        if token in ("{", ";"):
            directive = Directive(words[0], words[1:])
            stack[-1].children.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return root


@pytest.fixture(scope="module")
def nginx() -> Directive:
    return parse_nginx(NGINX_CONF.read_text())


def timeout_s(value: str) -> float:
    return seconds(value if value[-1].isalpha() else value + "s")


def test_nginx_passes_websockets_and_the_headers_the_gateway_reads(nginx: Directive) -> None:
    server = nginx.one("server")
    headers = {d.args[0].lower(): d.args[1] for d in server.all("proxy_set_header")}
    assert server.value("proxy_http_version") == ["1.1"]
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    assert headers["host"] == "$http_host"  # with the port: the gateway builds URLs from it
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-callbridge-retry"] == "$callbridge_retry"
    maps = {d.args[1]: d for d in nginx.all("map")}
    assert maps["$connection_upgrade"].args[0] == "$http_upgrade"
    # Forwarded proto/host: an outer proxy's value wins, else what this proxy saw.
    for header, own in (("x-forwarded-proto", "$scheme"), ("x-forwarded-host", "$http_host")):
        chosen = maps[headers[header]]
        assert chosen.args[0] == "$http_" + header.replace("-", "_")
        assert {tuple(d.args) for d in chosen.children} == {(chosen.args[0],), (own,)}
        assert {d.name for d in chosen.children} == {"default", ""}
    # A location with its own proxy_set_header would silently drop all of the above.
    for location in server.all("location"):
        assert not [d for d in location.walk() if d.name == "proxy_set_header"], location.args


def test_nginx_routes_each_gateway_path_with_the_right_timeouts_and_retries(
    nginx: Directive,
) -> None:
    server = nginx.one("server")
    regex = [loc for loc in server.all("location") if loc.args[0] == "~"]
    assert len(regex) == 1
    streams = regex[0]
    token = StreamTokens(b"0123456789abcdef").mint("telnyx", "v3:abc", 1.0)
    for path in (TWILIO_STREAM, TELNYX_STREAM):
        assert re.search(streams.args[1], path), path
        assert re.search(streams.args[1], f"{path}/{token}"), path  # the webhook answer's URL
    for path in WEBHOOKS:
        assert not re.search(streams.args[1], path), path
    # A call is one websocket for up to MAX_CALL_DURATION.
    longest_call = Settings.model_fields["max_call_duration"].default
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert timeout_s(streams.value(name)[0]) > longest_call
    assert set(streams.value("proxy_next_upstream")) == {"error", "timeout", "http_503"}
    assert streams.value("error_page") == ["502", "503", "=", "@stream_last_try"]

    prefixes = {loc.args[0]: loc for loc in server.all("location") if len(loc.args) == 1}
    for path in WEBHOOKS:
        webhook = prefixes["/" + path.split("/")[1] + "/"]
        assert webhook.value("proxy_pass") == ["http://callbridge"]
        retries = set(webhook.value("proxy_next_upstream"))
        assert {"error", "timeout", "http_503", "non_idempotent"} <= retries  # POSTs
        assert timeout_s(webhook.value("proxy_read_timeout")[0]) < 15  # Twilio waits 15 s
        assert webhook.value("error_page") == ["502", "503", "=", "@webhook_last_try"]
        assert webhook.value("proxy_intercept_errors") == ["on"]

    for name in ("@stream_last_try", "@webhook_last_try"):
        last = server.one("location", name)
        assert last.value("set") == ["$callbridge_retry", ""]  # the final answer, not a 503
        assert last.value("proxy_pass") == ["http://callbridge_last_try"]
        assert all("http_503" not in d.args for d in last.all("proxy_next_upstream"))
    assert server.value("set") == ["$callbridge_retry", "503"]
    # /metrics, and anything else, stays private.
    assert prefixes["/"].value("return") == ["404"]
    assert server.one("location", "=", "/healthz").value("return")[0] == "200"
    assert server.one("location", "=", "/readyz").value("proxy_pass")[0].startswith("http://")


def test_nginx_follows_the_scaled_service_through_dockers_dns(nginx: Directive) -> None:
    assert nginx.value("resolver")[0] == "127.0.0.11"
    upstreams = {d.args[0]: d for d in nginx.all("upstream")}
    assert set(upstreams) == {"callbridge", "callbridge_last_try"}
    for upstream in upstreams.values():
        assert upstream.all("zone"), "`resolve` needs a shared memory zone"
        (server,) = upstream.all("server")
        assert server.args[:2] == ["gateway:8080", "resolve"]
        assert not {"ip_hash", "hash", "sticky"} & {d.name for d in upstream.children}
    fails = dict(a.split("=") for a in upstreams["callbridge"].one("server").args[2:])
    assert int(fails["max_fails"]) >= 1 and seconds(fails["fail_timeout"]) > 0
    last = dict(a.split("=") for a in upstreams["callbridge_last_try"].one("server").args[2:])
    assert last["max_fails"] == "0"  # never marked down: it gives the final answer


@pytest.mark.skipif(not NGINX.exists(), reason=f"{NGINX} not found: apt-get install nginx")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    replicas = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"]
    conf = write_nginx_files(tmp_path, replicas, 18080)
    done = subprocess.run(
        nginx_command(tmp_path, conf, "-t"), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


# --- docker-compose.yml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data["services"]  # type: ignore[no-any-return]


def test_compose_runs_replicas_behind_the_proxy(compose: dict[str, Any], nginx: Directive) -> None:
    gateway, proxy = compose["gateway"], compose["proxy"]
    assert "ports" not in gateway, "a published replica port stops `--scale` working"
    assert gateway["expose"] == ["8080"]
    assert gateway["build"] == "."
    assert {"path": ".env", "required": False} in gateway["env_file"]
    env = gateway["environment"]
    assert set(env) <= setting_names(), set(env) - setting_names()
    # Workers per replica: .env's WORKERS, else (empty) one per core of the container's quota.
    assert env["WORKERS"] == "${WORKERS:-}"
    # Every replica must check the tokens the others mint: the shared secret is required.
    assert env["GATEWAY_SECRET"].startswith("${GATEWAY_SECRET:?")
    source, target, mode = gateway["volumes"][0].split(":")
    assert (ROOT / source).resolve() == ROOT / "agents.yaml" and mode == "ro"
    assert env["AGENTS_FILE"] == target
    assert seconds(gateway["stop_grace_period"]) > float(env["DRAIN_TIMEOUT"]) + STOP_AFTER_DRAIN_S
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert ":8080/" in " ".join(gateway["healthcheck"]["test"])

    # The proxy: this repository's nginx config, the only published port, new enough for
    # `resolve`, and reaching the service by its compose name.
    mounts = dict(v.split(":")[:2] for v in proxy["volumes"])
    assert mounts == {"./deploy/nginx/gateway.conf": "/etc/nginx/conf.d/default.conf"}
    listen = nginx.one("server").value("listen")
    assert proxy["ports"] == ["${PROXY_PORT:-8080}:" + listen[0]]
    upstream_host = nginx.one("upstream", "callbridge").one("server").args[0]
    assert upstream_host == "gateway:" + gateway["expose"][0]
    image, _, tag = proxy["image"].partition(":")
    assert image == "nginx"
    version = tuple(int(n) for n in tag.split("-")[0].split("."))
    assert version >= (1, 27, 3), "`resolve` in an upstream needs nginx >= 1.27.3"
    assert proxy["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(proxy["healthcheck"]["test"])
    assert seconds(proxy["stop_grace_period"]) >= seconds(gateway["stop_grace_period"])


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s (not examples/), by kind; each kind appears once."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']}s"
            docs[doc["kind"]] = doc
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget", "ConfigMap"}  # fmt: skip
    return docs


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def _selects_pods(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_deployment_runs_three_non_root_replicas_with_limits(
    k8s: dict[str, dict[str, Any]],
) -> None:
    deployment = k8s["Deployment"]
    spec = deployment["spec"]
    assert deployment["apiVersion"] == "apps/v1"
    assert spec["replicas"] == 3
    assert _selects_pods(spec["selector"]["matchLabels"], deployment)
    pod = spec["template"]["spec"]
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid, "the Dockerfile's user"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    container = _container(deployment)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind])


def test_each_pod_runs_a_worker_per_core_of_its_cpu_limit_within_the_latency_slo(
    k8s: dict[str, dict[str, Any]],
) -> None:
    """The CPU limit is the pod's worker count (``gateway.cpus.available_cpus`` reads it
    from the cgroup quota): a whole number of cores, requested as well, so no worker gets part
    of a core; MAX_CONCURRENT_CALLS is the pod's total, and a worker's share stays where the
    load benchmark held the latency SLO (30 calls a core)."""
    container = _container(k8s["Deployment"])
    env = _env(container)
    assert "WORKERS" not in env  # the limit decides
    limit = quantity(container["resources"]["limits"]["cpu"])
    assert limit >= 1 and limit == int(limit)
    assert quantity(container["resources"]["requests"]["cpu"]) == limit
    workers = math.ceil(limit)
    per_worker = math.ceil(int(env["MAX_CONCURRENT_CALLS"]["value"]) / workers)
    assert 20 <= per_worker <= 30


def test_deployment_environment_is_the_gateways_settings_with_secrets_from_a_secret(
    k8s: dict[str, dict[str, Any]],
) -> None:
    env = _env(_container(k8s["Deployment"]))
    assert set(env) <= setting_names(), set(env) - setting_names()
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert not refs["GATEWAY_SECRET"].get("optional", False)
    # Which provider's key is needed depends on agents.yaml; serve refuses to start without it.
    for provider_key in ("GEMINI_API_KEY", "OPENAI_API_KEY"):
        assert refs[provider_key].get("optional") is True, provider_key
    for name, ref in refs.items():
        assert ref["key"] == name and ref["name"] == "callbridge-secrets"
    for name in SECRET_SETTINGS:
        assert "value" not in env.get(name, {}), f"{name} must come from the Secret"


def test_deployment_mounts_agents_yaml_where_agents_file_points(
    k8s: dict[str, dict[str, Any]],
) -> None:
    deployment, configmap = k8s["Deployment"], k8s["ConfigMap"]
    container = _container(deployment)
    agents_file = Path(_env(container)["AGENTS_FILE"]["value"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == agents_file.parent]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    graph = parse_agents(configmap["data"][agents_file.name], source="configmap")
    assert graph.spec.agents  # the gateway itself accepts it


def test_probes_ports_and_shutdown_timing_match_the_gateway(
    k8s: dict[str, dict[str, Any]],
) -> None:
    deployment = k8s["Deployment"]
    container = _container(deployment)
    env = _env(container)
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["PORT"]["value"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pre_stop_s >= 5  # long enough for endpoints to update everywhere
    drain = float(env["DRAIN_TIMEOUT"]["value"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop_s + drain + STOP_AFTER_DRAIN_S

    service = k8s["Service"]
    assert _selects_pods(service["spec"]["selector"], deployment)
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


def test_autoscaler_and_disruption_budget_select_the_deployment(
    k8s: dict[str, dict[str, Any]],
) -> None:
    deployment, hpa = k8s["Deployment"], k8s["HorizontalPodAutoscaler"]
    pdb = k8s["PodDisruptionBudget"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment",
                      "name": deployment["metadata"]["name"]}  # fmt: skip
    assert (
        hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in _container(deployment)["resources"]["requests"]  # utilisation is of this
    assert pdb["apiVersion"] == "policy/v1"
    assert _selects_pods(pdb["spec"]["selector"]["matchLabels"], deployment)
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdb["spec"]


def test_env_example_lists_every_security_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    security = {"CARRIERS", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TELNYX_PUBLIC_KEY",
                "TELNYX_API_KEY", "ALLOW_UNSIGNED_WEBHOOKS", "MAX_PENDING_STREAMS",
                "GATEWAY_SECRET", "STREAM_TOKEN_TTL", "LOG_TRANSCRIPTS"}  # fmt: skip
    assert security <= named, security - named
    # POSTGRES_PASSWORD is docker compose's (its PostgreSQL service), not the gateway's.
    assert named - {"POSTGRES_PASSWORD"} <= setting_names(), named - setting_names()


def test_example_ingress_keeps_hour_long_calls_and_reaches_the_service(
    k8s: dict[str, dict[str, Any]],
) -> None:
    ingress = yaml.safe_load((K8S / "examples" / "ingress-nginx.yaml").read_text())
    service = k8s["Service"]
    notes = ingress["metadata"]["annotations"]
    longest_call = Settings.model_fields["max_call_duration"].default
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(notes[f"nginx.ingress.kubernetes.io/{name}"]) > longest_call
    (rule,) = ingress["spec"]["rules"]
    paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert set(paths) == {"/twilio/", "/telnyx/"}
    (service_port,) = service["spec"]["ports"]
    for backend in paths.values():
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"] == {"name": service_port["name"]}
