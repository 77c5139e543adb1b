"""How a carrier's media websocket becomes a call.

The stream URL is public (the carrier dials it), so a socket is not a call until it proves
itself, and proving costs the gateway as little as possible:

- **At the upgrade.** The webhook answer puts the stream token in the stream URL's path
  (``wss://HOST/twilio/stream/<token>``; no carrier rewrites a path, and Twilio forbids query
  strings), and Telnyx Call Control also sends it as ``x-telnyx-streaming-auth-token``. A valid
  token is checked before the upgrade is accepted and admits the socket as a call at once: it
  counts for capacity from then on, so a real caller is never crowded out. An invalid, reused
  or expired one is refused with 403 and costs nothing more.
- **At ``start``.** A socket on the bare path (``/twilio/stream``) is *pending* until its
  ``start`` brings a valid token (a ``<Parameter>``, or Call Control's ``client_state``).
  Pending sockets are not calls: they touch neither capacity, ``readyz`` nor
  ``gateway_active_calls``; there are at most ``MAX_PENDING_STREAMS`` of them across all
  routes, and each has 5 s to send its ``start``.

Either way a token admits one stream for its call (:class:`~gateway.security.StreamLedger`),
and only then is a model session opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

import structlog
from fastapi import WebSocket
from fastapi.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.call.bridge import CallBridge
from gateway.call.hooks import CallHooks, Refusal
from gateway.carriers.base import CarrierCodec, StreamStarted
from gateway.connections import MEDIA_LANE, MEDIA_SEND, MediaHandler
from gateway.security import StreamGrant, StreamTokenError
from gateway.web.httputil import pass_on, proxy_retries
from gateway.web.state import GatewayState


async def serve_stream(
    state: GatewayState,
    websocket: WebSocket,
    *,
    carrier: str,
    codec: CarrierCodec,
    hooks: CallHooks,
    token: str | None,
) -> None:
    """Serve one stream upgrade: refuse it, or accept it as a call or as a pending socket.

    ``token`` is the one the upgrade itself carries (URL path or header), if any; the route
    has already checked what the carrier signs (Twilio's ``X-Twilio-Signature``).
    """
    log = structlog.get_logger(f"gateway.{carrier}")
    refusal = state.refusal()
    if refusal is not None and proxy_retries(websocket):
        log.info(f"{carrier}.stream_passed_on", reason=refusal)
        await websocket.send_denial_response(pass_on(refusal))
        return
    if token is None:
        if len(state.pending) >= state.settings.max_pending_streams:
            state.metrics.errors.labels("pending_full").inc()
            state.log_refusal(log, f"{carrier}.stream_refused", reason="too many pending streams")
            await _deny(websocket, "too many streams without a token in their URL", 503)
            return
        await _run(state, websocket, carrier, codec, hooks, grant=None)
        return
    try:
        grant = state.claim_stream(token, carrier)
    except StreamTokenError as exc:
        state.metrics.errors.labels(exc.kind).inc()
        state.log_refusal(log, f"{carrier}.stream_refused", reason=str(exc))
        await _deny(websocket, "invalid, expired or already used stream token", 403)
        return
    await _run(state, websocket, carrier, codec, hooks, grant=grant)


async def _run(
    state: GatewayState,
    websocket: WebSocket,
    carrier: str,
    codec: CarrierCodec,
    hooks: CallHooks,
    *,
    grant: StreamGrant | None,
) -> None:
    """Accept the socket and serve it, as a call (admitted) or pending (until ``start``)."""
    task = asyncio.current_task()
    assert task is not None
    log = structlog.get_logger(f"gateway.{carrier}")

    def admit(started: StreamStarted) -> Refusal | None:
        refused = admission(started)
        if refused is None and started.downlink_format is not None:  # once a call, not before
            log.info(  # e.g. Telnyx: the caller in the call's codec, the agent in G722
                f"{carrier}.formats_differ",
                call_id=started.call_id,
                inbound=str(started.audio_format),
                outbound=str(started.downlink_format),
            )
        return refused

    def admission(started: StreamStarted) -> Refusal | None:
        if grant is not None:  # admitted (or refused for room) at the upgrade
            if started.call_id != grant.call_id:
                return Refusal("unauthorized", "stream token was minted for another call")
            if task not in state.calls:
                return Refusal("rejected_capacity", "no room at the upgrade")
            return None
        try:
            state.claim_stream(started.parameters.get("token"), carrier, started.call_id)
        except StreamTokenError as exc:
            return Refusal("unauthorized", str(exc), exc.kind)
        if not state.has_room():
            return Refusal("rejected_capacity", "no room at start")
        state.enter_call(task, bridge)
        return None

    # One reading of agents.yaml for the whole call: a reload from now on is for later calls.
    graph = state.graph
    bridge = CallBridge(
        StarletteCarrierSocket(websocket),
        codec,
        graph=graph,
        new_live_session=state.providers.sessions(graph),
        options=state.bridge_options(),
        observers=state.call_observers(),
        hooks=replace(hooks, admit=admit),
        metrics=state.metrics,
        tool_runner=state.tool_runner,
        records=state.records,
    )
    # A token at the upgrade admits the call now if there is room (drain or not: its webhook
    # was answered before); without room the socket is kept only to give the busy message.
    if grant is not None and state.has_room():
        state.enter_call(task, bridge)
    else:
        state.pending.add(task)
    try:
        await websocket.accept()
        await bridge.run()
    finally:
        state.leave(task)


async def _deny(websocket: WebSocket, text: str, status: int) -> None:
    """Refuse an upgrade with an HTTP answer (no websocket is opened)."""
    await websocket.send_denial_response(PlainTextResponse(text, status))


class StarletteCarrierSocket:
    """Adapts Starlette's WebSocket to the bridge's small :class:`CarrierSocket` protocol."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._gone = False
        #: The server's direct write (:data:`~gateway.connections.MEDIA_SEND`), if it has one.
        self._send_now: Callable[[str], bool] | None = websocket.scope.get("extensions", {}).get(
            MEDIA_SEND
        )

    async def receive(self) -> str | bytes | None:
        """The next message's text or bytes; None once the caller is gone.

        On an open socket this awaits the ASGI ``receive`` itself: Starlette's ``receive``
        re-validates the state and message type of each of the fifty messages a second a call
        brings, which the ASGI server already guarantees for an accepted socket.
        """
        if self._gone:
            return None
        ws = self._ws
        try:
            if ws.client_state is WebSocketState.CONNECTED:
                message = await ws._receive()
            else:
                message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            self._gone = True
            return None
        if message["type"] == "websocket.disconnect":
            ws.client_state = WebSocketState.DISCONNECTED  # as Starlette's receive would
            self._gone = True
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    def take_media(self, lane: MediaHandler | None) -> bool:
        """Through the server's media lane (:data:`~gateway.connections.MEDIA_LANE`), when the
        socket came through :class:`~gateway.connections.MediaWebSocketProtocol`."""
        offer = self._ws.scope.get("extensions", {}).get(MEDIA_LANE)
        if offer is None:
            return False
        offer(lane)
        return True

    async def send(self, text: str) -> None:
        """Written at once when the socket allows it (:meth:`send_now`), else Starlette's
        way."""
        if not self.send_now(text):
            await self._ws.send_text(text)

    def send_now(self, text: str) -> bool:
        """Written at once when the socket allows it (an accepted socket, through
        :class:`~gateway.connections.MediaWebSocketProtocol`); False, with nothing done,
        otherwise."""
        send_now = self._send_now
        connected = self._ws.application_state is WebSocketState.CONNECTED
        return send_now is not None and connected and send_now(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._gone or self._ws.application_state == WebSocketState.DISCONNECTED:
            return
        self._gone = True
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)
