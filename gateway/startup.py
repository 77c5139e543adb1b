"""What ``gateway serve`` says and checks once, at start-up, before anything listens.

Said once per ``gateway serve``: by the process itself, or, with several workers, by their
master (which must not load the web layer, uvicorn or the SDKs to say it), so a warning is one
log line however many processes serve the calls. :func:`announce_graph` is said again by
every process that reloads agents.yaml, since each then serves the new file.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import structlog

from gateway.agents import END_CALL_TOOL, TRANSFER_CALL_TOOL, AgentGraph
from gateway.logs import register_secrets
from gateway.settings import ConfigError, Settings


def announce(
    settings: Settings, graph: AgentGraph, *, simulator: bool, log: structlog.stdlib.BoundLogger
) -> None:
    """The start-up warnings: the agents file's (see :func:`announce_graph`), a guessable
    admin token, and carriers served unverified (only with ALLOW_UNSIGNED_WEBHOOKS=true: the
    CLI refuses to start otherwise; never with the simulators, which cost nothing)."""
    announce_graph(settings, graph, log)  # its HTTP tools' tokens are scrubbed from here on
    if settings.weak_admin_token():
        log.warning(
            "security.weak_admin_token",
            risk="a short ADMIN_API_TOKEN can be guessed, and it reads every call record and "
            "places calls; use a long random one (openssl rand -hex 32)",
        )
    if not resampler_compiled():
        log.warning(
            "audio.resampler_not_compiled",
            risk="installed without a C compiler, so the resampler runs as numpy: the same "
            "audio at several times the CPU per call; reinstall with gcc present "
            "(the container image always has it)",
        )
    if not media_plane_compiled():
        log.warning(
            "media.plane_not_compiled",
            risk="installed without a C compiler, so each audio frame's JSON, base64 and "
            "websocket framing take the Python forms: the same bytes at more CPU per call; "
            "reinstall with gcc present (the container image always has it)",
        )
    unverified = [] if simulator else settings.unverified_carriers()
    if unverified:
        log.warning(
            "security.unsigned_webhooks_allowed",
            risk="anyone who finds this server can place calls to your agents and spend your "
            "model quota; set the verification keys before taking real calls",
            missing=unverified,
        )


def announce_graph(
    settings: Settings, graph: AgentGraph, log: structlog.stdlib.BoundLogger
) -> None:
    """What a newly loaded agents file needs before it serves, at start-up and on a reload:
    its expanded HTTP tool secrets join the log scrubber (before anything about it is logged),
    and its warnings and the call actions it cannot carry out are logged."""
    register_secrets(graph.secrets())
    for warning in graph.warnings:
        log.warning("agents.warning", detail=warning)
    for gap in call_action_gaps(settings, graph):
        log.warning("agents.call_actions_unavailable", detail=gap)


def call_action_gaps(settings: Settings, graph: AgentGraph) -> list[str]:
    """What agents with ``end_call`` or ``transfer_call`` cannot do on the carriers served,
    for want of the carrier's API key: said at start-up, not found out on a live call."""
    acting = sorted(
        {tool for agent in graph.spec.agents for tool in agent.tools}
        & {END_CALL_TOOL, TRANSFER_CALL_TOOL}
    )
    if not acting:
        return []
    tools = " and ".join(acting)
    need = "needs" if len(acting) == 1 else "need"
    gaps = []
    if "twilio" in settings.served_carriers and settings.twilio_auth_token is None:
        gaps.append(
            f"Twilio: {tools} {need} TWILIO_AUTH_TOKEN (the REST API); without it end_call "
            "closes the stream, which plays the fallback after </Connect>, and transfers fail"
        )
    if "telnyx" in settings.served_carriers and settings.telnyx_api_key is None:
        gaps.append(f"Telnyx: {tools} {need} TELNYX_API_KEY (TeXML REST and Call Control)")
    return gaps


def prepare_recordings_dir(settings: Settings) -> None:
    """Create RECORDINGS_DIR if needed; a directory the gateway cannot write to is a start-up
    error, not a silent loss of every recording."""
    directory = settings.recordings_dir
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".callbridge-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"RECORDINGS_DIR: cannot write recordings to {directory}: {exc.strerror or exc}"
        ) from None


def resampler_compiled() -> bool:
    """Whether the install built the resampler's FIR (``gateway/audio/_polyphase.c``): pip
    skips it quietly without a compiler. Found by its file, so a workers' master need not
    import numpy to ask; ``gateway.audio.resample.COMPILED`` is what the calls then use."""
    return _extension_built("audio", "_polyphase")


def media_plane_compiled() -> bool:
    """Whether the install built the media plane (``gateway/_mediaplane.c``), found the same
    way; ``gateway.mediaplane.COMPILED`` is what the calls then use."""
    return _extension_built("_mediaplane")


def _extension_built(*parts: str) -> bool:
    spec = importlib.util.find_spec("gateway")
    if spec is None or spec.origin is None:
        return False
    where = Path(spec.origin).parent.joinpath(*parts[:-1])
    return any(
        (where / f"{parts[-1]}{suffix}").is_file()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )
