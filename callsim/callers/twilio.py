"""A simulated phone call against a running gateway, over the real wire protocols.

:class:`StreamCaller` is the carrier-neutral half: it runs the media WebSocket in real time and
models the carrier's playback buffer (through the sans-I/O
:class:`~callsim.callers.state.CallerState`) to record what the caller *heard* and to
echo marks as the carrier does. :class:`TwilioCaller` adds Twilio's part: it POSTs the voice
webhook, checks the TwiML and speaks the Media Streams protocol; the Telnyx caller lives in
:mod:`callsim.callers.telnyx`, the browser's in :mod:`callsim.callers.web`. Every way the
gateway's traffic would upset the carrier is recorded in ``CallResult.violations``.

Three tasks share one call, all owned by :meth:`StreamCaller.run` and cancelled and awaited
before it returns:

* the *speaker* sends one ``media`` message per 20 ms on an absolute schedule from the ``start``
  message (chunk ``k`` covers call time ``[(k-1)·20, k·20)`` ms and is sent at ``k·20`` ms, when
  a phone would have finished capturing it), DTMF at its scheduled times, then hangs up;
* the *listener* hands every frame from the gateway to the state (validation, the playback
  buffer) and sends what the state queued in answer: carrier errors, then mark echoes;
* the *playout clock* ticks the state every 20 ms (tick ``j`` at ``j·20`` ms after ``start``),
  which moves 20 ms onto the ``heard`` timeline, and sends the echoes of marks now played.

Absolute schedules never drift: a late wake-up is followed by an early one, and a stalled loop
catches up at once (the lateness is measured and reported in ``CallResult``). The listener also
plays every tick due before it applies a frame, so a late playout wake-up cannot move audio
earlier on the heard timeline than the moment it arrived. All sends go through one lock, so
sequence-number order is wire order (unless a subclass deliberately reorders media) and mark
echoes keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cache, partial
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from callsim.callers.playback import ULAW_SILENCE
from callsim.callers.result import ApiRequest, CallEvent, CallResult, EventKind, TimingStats
from callsim.callers.state import CallerState
from callsim.twilio import peer
from callsim.twilio.api import TwilioApiSimulator
from callsim.twilio.peer import Violation, format_violation
from callsim.twilio.webhook import (
    check_twiml,
    twilio_signature,
    verbs_after_connect,
    webhook_form,
)
from gateway.model.websocket import DirectSender

__all__ = ["HangupMode", "StreamCaller", "TwilioCaller"]

log = logging.getLogger("callsim.callers")

HangupMode = Literal["stop", "close", "drop"]
"""How the caller ends the call: ``stop`` then close (a normal hang-up), a close without ``stop``,
or ``drop``: the TCP connection is torn down with no close handshake (a network failure)."""

FRAME_BYTES = peer.FRAME_BYTES
FRAME_S = peer.FRAME_S
MessageBuilder = Callable[..., dict[str, Any]]
"""Builds one carrier message when called as ``build(seq=n)`` with its sequence number."""

MAX_FRAME_BYTES = 64 * 2**20
"""Twilio accepts media of any size; 10 minutes of μ-law is 6.4 MB of base64, so allow plenty."""


@cache
def default_ssl_context() -> ssl.SSLContext:
    """The system trust store (``SSL_CERT_FILE`` honoured), loaded once per process.

    httpx builds a context per client, and loading the trust store costs ~10 ms of CPU: with a
    client per webhook, a load test's callers spent a sixth of their time on it.
    """
    return ssl.create_default_context()


class StreamCaller:
    """One simulated call on a media WebSocket; subclasses speak a carrier's protocol.

    A subclass builds the :class:`CallResult`, negotiates the stream in :meth:`_setup` and
    provides the message builders. ``audio_chunks`` is how many 20 ms frames of speech the call
    has; ``linger_s`` of silence follows before the caller hangs up as ``hangup`` says. ``dtmf``
    is ``(call time in seconds, digit)`` pairs with digits from ``dtmf_digits``.

    ``on_event`` is called synchronously from the call's tasks and must not block; to consume
    events asynchronously pass ``queue.put_nowait``. If it raises, the call goes on and ``run``
    re-raises the first such exception once everything is closed.
    """

    #: The carrier's documented error codes for a stream that cannot connect and for broken
    #: WebSocket framing, quoted in those violations (None: the carrier documents none).
    CONNECT_FAILED_CODE: str | None = None
    FRAMING_ERROR_CODE: str | None = None

    def __init__(
        self,
        result: CallResult,
        *,
        audio_chunks: int,
        linger_s: float,
        dtmf: Sequence[tuple[float, str]],
        dtmf_digits: Collection[str],
        hangup: HangupMode,
        ssl_context: ssl.SSLContext | None,
        use_env_proxy: bool,
        webhook_timeout_s: float,
        connect_timeout_s: float,
        close_timeout_s: float,
        on_event: Callable[[CallEvent], None] | None,
    ) -> None:
        if not math.isfinite(linger_s) or linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if hangup not in ("stop", "close", "drop"):
            raise ValueError(f"hangup must be stop, close or drop, got {hangup!r}")
        self._audio_chunks = audio_chunks
        self._total_chunks = audio_chunks + round(linger_s / FRAME_S)
        self._dtmf = sorted(dtmf)
        for at, digit in self._dtmf:
            if len(digit) != 1 or digit not in dtmf_digits:
                raise ValueError(
                    f"DTMF digit must be one of {''.join(sorted(dtmf_digits))}, got {digit!r}"
                )
            if not 0 <= at <= self._total_chunks * FRAME_S:
                raise ValueError(f"DTMF at {at} s is outside the call (audio + linger)")
        self._hangup_mode = hangup
        self._ssl = ssl_context
        self._use_env_proxy = use_env_proxy
        self._webhook_timeout = webhook_timeout_s
        self._connect_timeout = connect_timeout_s
        self._close_timeout = close_timeout_s
        self._on_event = on_event

        self.result = result
        """Live record of the call; complete once :meth:`run` returns."""
        self._state = CallerState(self.result, self._deliver)
        self._ran = False
        self._hangup_requested = False
        self._hangup_by: Literal["caller", "gateway"] = "caller"
        #: ``ws.send``, written straight to the transport when it can go at once: the
        #: load benchmarks run fifty callers on one core beside the model simulator.
        self._ws_send: DirectSender | None = None
        self._send_lock = asyncio.Lock()
        self._next_seq = 1
        self._send_lateness: list[float] = []
        self._playout_lateness: list[float] = []
        self._callback_error: Exception | None = None

    def hangup(self) -> None:
        """Ask the caller to hang up now (within one 20 ms tick), as set by ``hangup``."""
        self._hangup_requested = True

    async def run(self) -> CallResult:
        """Place the call and return when it has ended and everything it opened is closed."""
        if self._ran:
            raise RuntimeError(f"a {type(self).__name__} places one call; create another")
        self._ran = True
        try:
            url = await self._setup()
            if url is not None:
                await self._stream(url)
            await self._after_stream()
        finally:
            try:
                await self._cleanup()
            finally:
                if self.result.started_at is not None:  # a stream that never ended (cancelled)
                    self._state.end("caller", time.monotonic())
                self._state.finish()
                self.result.send_timing = TimingStats.of(self._send_lateness)
                self.result.playout_timing = TimingStats.of(self._playout_lateness)
        if self._callback_error is not None:
            raise self._callback_error
        return self.result

    # --- what a carrier provides ----------------------------------------------------------------

    async def _setup(self) -> str | None:
        """Do everything before the stream (webhooks); return the WebSocket URL, or None."""
        raise NotImplementedError

    async def _after_stream(self) -> None:
        """What the carrier does once the stream is over (e.g. hang-up webhooks)."""

    async def _cleanup(self) -> None:
        """Release what :meth:`_setup` acquired; runs whatever happened, even when cancelled."""

    def _ws_headers(self, url: str) -> dict[str, str]:
        """Extra headers on the WebSocket upgrade request."""
        return {}

    def _connect_failed(self, url: str, exc: Exception) -> str:
        """The violation text for a WebSocket that could not be opened."""
        detail = f"{url}: {type(exc).__name__}: {exc}{_code(self.CONNECT_FAILED_CODE)}"
        return format_violation(Violation.STREAM_CONNECT_FAILED, detail)

    def _framing_violation(self, code: int, reason: str) -> str:
        """The violation text for a gateway that broke WebSocket framing."""
        detail = f"the caller's WebSocket closed with {code} {reason!r}"
        return format_violation(
            Violation.WEBSOCKET_PROTOCOL, detail + _code(self.FRAMING_ERROR_CODE)
        )

    def _connected_message(self) -> dict[str, Any] | None:
        """The message before ``start``, or None for a protocol with none (the browser's)."""
        raise NotImplementedError

    def _start_builder(self) -> MessageBuilder:
        raise NotImplementedError

    def _media_builder(self, chunk: int) -> MessageBuilder:
        raise NotImplementedError

    def _dtmf_builder(self, digit: str) -> MessageBuilder:
        raise NotImplementedError

    def _stop_builder(self) -> MessageBuilder:
        raise NotImplementedError

    def _echo_builder(self, name: str) -> MessageBuilder:
        raise NotImplementedError

    def _on_started(self) -> None:
        """Called once ``start`` is on the wire (the call timeline has begun)."""

    def _on_hanging_up(self, by: Literal["caller", "gateway"]) -> None:
        """Called when the call ends from the speaker's side, before anything is sent."""

    async def _send_media(self, chunk: int) -> None:
        """Send what is due at the capture time of ``chunk`` (by default: that chunk)."""
        await self._send(self._media_builder(chunk))

    # --- stream ---------------------------------------------------------------------------------

    async def _stream(self, url: str) -> None:
        res = self.result
        res.stream_url = url
        tls: dict[str, Any] = {}
        if self._ssl is not None and url.startswith("wss:"):
            tls["ssl"] = self._ssl
        try:
            ws = await connect(
                url,
                additional_headers=self._ws_headers(url),
                user_agent_header=None,
                compression=None,  # a gateway must not rely on permessage-deflate
                proxy=True if self._use_env_proxy else None,
                open_timeout=self._connect_timeout,
                ping_interval=None,
                close_timeout=self._close_timeout,
                max_size=MAX_FRAME_BYTES,
                **tls,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self._violation(self._connect_failed(url, exc))
            return
        self._ws_send = DirectSender(ws)
        try:
            await self._converse(ws)
        finally:
            if not ws.transport.is_closing():
                ws.transport.abort()
            await ws.wait_closed()
            res.close_code, res.close_reason = ws.close_code, ws.close_reason
            self._emit("closed", detail=res.closed_by or "")

    async def _converse(self, ws: ClientConnection) -> None:
        """Send ``connected`` (if the protocol has one) and ``start``, then run the call's three
        tasks to its end."""
        res = self.result
        self._emit("stream_open")
        try:
            connected = self._connected_message()
            if connected is not None:
                await ws.send(peer.encode(connected))
                res.sent.append((time.monotonic(), connected))
            res.started_at = time.monotonic()
            await self._send(self._start_builder())
        except ConnectionClosed as exc:
            self._on_closed(exc)
            return
        self._emit("started")
        self._on_started()
        tasks = [
            asyncio.create_task(self._listen(ws), name=f"caller-listen-{res.call_sid}"),
            asyncio.create_task(self._speak(ws), name=f"caller-speak-{res.call_sid}"),
            asyncio.create_task(self._playout(), name=f"caller-playout-{res.call_sid}"),
        ]
        listener = tasks[0]
        failures: list[BaseException] = []
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                # The caller hung up (speaker done); the close handshake ends the listener,
                # bounded by close_timeout inside websockets. The margin is a safety net only.
                await asyncio.wait([listener], timeout=self._close_timeout + 1.0)
        finally:
            self._state.end("caller", time.monotonic())  # no-op unless leaving early
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, Exception)]
            for failure in failures:
                log.error("caller task failed", exc_info=failure)
        if failures:
            raise failures[0]

    # --- the three tasks ------------------------------------------------------------------------

    async def _speak(self, ws: ClientConnection) -> None:
        """Send the caller's audio and DTMF in real time, then hang up."""
        res = self.result
        assert res.started_at is not None
        t0 = res.started_at
        dtmf = deque(self._dtmf)
        try:
            for k in range(1, self._total_chunks + 1):
                while dtmf and dtmf[0][0] <= k * FRAME_S and not self._hangup_requested:
                    at, digit = dtmf.popleft()
                    await _sleep_until(t0 + at)
                    await self._send(self._dtmf_builder(digit))
                    self._emit("dtmf_sent", detail=digit)
                self._send_lateness.append(await _sleep_until(t0 + k * FRAME_S))
                if self._hangup_requested or self._state.ending:
                    break
                await self._send_media(k)
                if k == self._audio_chunks:
                    self._emit("audio_ended")
            await self._hang_up(ws)
        except ConnectionClosed:
            return  # the listener records how and why

    async def _hang_up(self, ws: ClientConnection) -> None:
        """End the call from this side: the caller hung up, or (Telnyx) the gateway did via API.

        A gateway hang-up always ends like Telnyx ends it: ``stop``, then a normal close.
        """
        by = self._hangup_by
        if not self._state.end(by, time.monotonic()):
            return  # the gateway closed first
        self._on_hanging_up(by)
        mode: HangupMode = self._hangup_mode if by == "caller" else "stop"
        if by == "caller":
            self._emit("hangup", detail=mode)
        if mode == "stop":
            await self._send(self._stop_builder())
        if mode == "drop":
            ws.transport.abort()
            await ws.wait_closed()
        else:
            await ws.close()

    async def _listen(self, ws: ClientConnection) -> None:
        """Hand everything the gateway sends to the state, until the socket closes."""
        try:
            while True:
                frame = await ws.recv()
                self._state.on_frame(frame, time.monotonic())
                await self._send_replies()
                await self._send_echoes()
        except ConnectionClosed as exc:
            self._on_closed(exc)

    async def _playout(self) -> None:
        """Tick the playback model every 20 ms on an absolute schedule; send due echoes."""
        while True:
            lateness = await _sleep_until(self._state.next_tick_at())
            if self._state.ending:
                return
            self._playout_lateness.append(lateness)
            self._state.advance(time.monotonic())
            try:
                await self._send_echoes()
            except ConnectionClosed:
                return  # the listener records how and why

    # --- sending --------------------------------------------------------------------------------

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    async def _send(self, build: MessageBuilder) -> None:
        """Number, send and record one message; the lock keeps sequence order = wire order."""
        async with self._send_lock:
            await self._write(build(seq=self._take_seq()))

    async def _write(self, message: dict[str, Any]) -> None:
        """Send and record one complete message; the caller must hold the send lock."""
        assert self._ws_send is not None
        await self._ws_send(peer.encode(message))
        self.result.sent.append((time.monotonic(), message))

    async def _send_replies(self) -> None:
        """Send the carrier's answers to bad frames (unnumbered, as Telnyx sends ``error``)."""
        while (reply := self._state.next_reply()) is not None:
            async with self._send_lock:
                await self._write(reply)
            payload = reply.get("payload")
            code = payload.get("code") if isinstance(payload, dict) else None
            self._emit("error_sent", detail=str(code))

    async def _send_echoes(self) -> None:
        """Send queued mark echoes in order (the state stops releasing them once the call ends)."""
        while (echo := self._state.next_echo()) is not None:
            name, cleared = echo
            await self._send(self._echo_builder(name))
            self._state.echo_sent(name, cleared, time.monotonic())

    def _on_closed(self, exc: ConnectionClosed) -> None:
        if not self._state.end("gateway", time.monotonic()):
            return
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and (rcvd is None or exc.rcvd_then_sent is False):
            # Our WebSocket library closed first, so the gateway broke the framing protocol.
            self._violation(self._framing_violation(sent.code, sent.reason))

    # --- reporting ------------------------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self._state.violation(text, time.monotonic())

    def _emit(self, kind: EventKind, *, detail: str = "") -> None:
        self._deliver(CallEvent(kind, time.monotonic(), detail=detail))

    def _deliver(self, event: CallEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception as exc:
            log.exception("on_event callback failed on %s", event.kind)
            if self._callback_error is None:
                self._callback_error = exc


class TwilioCaller(StreamCaller):
    """One simulated inbound Twilio call. Create, ``await run()`` once, inspect the result.

    ``audio`` is what the caller says, μ-law 8 kHz (see :mod:`callsim.callers.audio`);
    after it, the caller keeps the line open (sending silence, as a phone does) for ``linger_s``
    seconds, then hangs up as ``hangup`` says. The gateway closing the WebSocket ends the call
    earlier. ``dtmf`` is ``(call time in seconds, digit)`` pairs.

    ``stream_url`` overrides where the WebSocket connects (for a gateway behind a proxy that
    writes its public URL into the TwiML); signatures are still computed over the TwiML URL.
    With ``auth_token`` the webhook carries ``X-Twilio-Signature`` computed over
    ``signature_url`` (default: the webhook URL actually requested) and the WebSocket upgrade
    carries ``x-twilio-signature`` over the stream URL with no params, as Twilio does.
    ``require_wss`` turns a ``ws://`` stream URL from a warning into a violation. ``on_event``
    is as described on :class:`StreamCaller`. With ``api`` (a
    :class:`~callsim.twilio.api.TwilioApiSimulator` the gateway's ``TWILIO_API_BASE`` points at)
    the call is registered there once its TwiML is accepted, and an update through the REST API
    ends the stream and runs the new TwiML, as on Twilio; ``CallResult.after_stream`` records
    what ran after the stream either way. ``call_sid``/``account_sid`` name a call that exists
    already (one the fake API placed: the callee's side of an outbound call); by default the
    caller makes up its own.
    """

    CONNECT_FAILED_CODE = "31920"
    FRAMING_ERROR_CODE = "31924"

    def __init__(
        self,
        gateway_url: str,
        *,
        audio: bytes = b"",
        linger_s: float = 1.0,
        dtmf: Sequence[tuple[float, str]] = (),
        hangup: HangupMode = "stop",
        from_number: str = "+14155550123",
        to_number: str = "+18005550100",
        webhook_path: str = "/twilio/voice",
        extra_form: Mapping[str, str] | None = None,
        stream_url: str | None = None,
        require_wss: bool = False,
        auth_token: str | None = None,
        signature_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        use_env_proxy: bool = False,
        webhook_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        on_event: Callable[[CallEvent], None] | None = None,
        api: TwilioApiSimulator | None = None,
        call_sid: str | None = None,
        account_sid: str | None = None,
    ) -> None:
        self._audio = bytes(audio)
        super().__init__(
            CallResult(
                webhook_url=gateway_url.rstrip("/") + webhook_path,
                call_sid=call_sid or peer.new_sid("CA"),
                account_sid=account_sid or peer.new_sid("AC"),
                stream_sid=peer.new_sid("MZ"),
            ),
            audio_chunks=math.ceil(len(self._audio) / FRAME_BYTES),
            linger_s=linger_s,
            dtmf=dtmf,
            dtmf_digits=peer.DTMF_DIGITS,
            hangup=hangup,
            ssl_context=ssl_context,
            use_env_proxy=use_env_proxy,
            webhook_timeout_s=webhook_timeout_s,
            connect_timeout_s=connect_timeout_s,
            close_timeout_s=close_timeout_s,
            on_event=on_event,
        )
        self._from, self._to = from_number, to_number
        self._extra_form = dict(extra_form or {})
        self._stream_url_override = stream_url
        self._require_wss = require_wss
        self._auth_token = auth_token
        self._signature_url = signature_url
        self._api = api
        self._updated: list[str] | None = None  # what a REST update put in place

    # --- webhook --------------------------------------------------------------------------------

    async def _setup(self) -> str | None:
        """POST the voice webhook; return the WebSocket URL to connect to, or None."""
        res = self.result
        form = webhook_form(
            call_sid=res.call_sid,
            account_sid=res.account_sid,
            from_number=self._from,
            to_number=self._to,
            extra=self._extra_form,
        )
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if self._auth_token is not None:
            signed_url = self._signature_url or res.webhook_url
            headers["X-Twilio-Signature"] = twilio_signature(self._auth_token, signed_url, form)
        async with httpx.AsyncClient(
            timeout=self._webhook_timeout,
            trust_env=self._use_env_proxy,
            verify=self._ssl if self._ssl is not None else default_ssl_context(),
        ) as http:
            try:
                response = await http.post(res.webhook_url, data=form, headers=headers)
            except httpx.HTTPError as exc:
                detail = f"POST {res.webhook_url}: {type(exc).__name__}: {exc} (11200)"
                self._violation(format_violation(Violation.WEBHOOK_FAILED, detail))
                return None
        res.webhook_status = response.status_code
        res.twiml = response.text
        check = check_twiml(
            status=response.status_code,
            content_type=response.headers.get("content-type"),
            body=response.content,
            webhook_url=res.webhook_url,
            require_wss=self._require_wss,
        )
        res.parameters = check.parameters
        res.twiml_stream_url = check.url
        res.warnings += check.warnings
        for text in check.violations:
            self._violation(text)
        if self._api is not None and check.url is not None:
            self._api.register(res.account_sid, res.call_sid, self._on_update)
        return self._stream_url_override or check.url

    # --- the REST API ---------------------------------------------------------------------------

    def _on_update(self, request: ApiRequest, verbs: list[str]) -> None:
        """The gateway updated the call through the fake REST API (runs in this call's loop):
        as on Twilio, the stream ends (``stop``, then a close) and the new TwiML runs."""
        res = self.result
        res.api_requests.append(request)
        self._emit("api_command", detail=f"{request.action} {request.status}")
        if self._updated is None and res.closed_by != "caller":
            self._updated = verbs
            self._hangup_by = "gateway"
            self._hangup_requested = True

    def _on_hanging_up(self, by: Literal["caller", "gateway"]) -> None:
        if by == "caller" and self._api is not None:
            self._api.end_call(self.result.call_sid)  # a later update gets 21220

    async def _after_stream(self) -> None:
        """What Twilio runs once the stream is over (see ``CallResult.after_stream``)."""
        res = self.result
        if self._updated is not None:
            res.after_stream = list(self._updated)
        elif res.closed_by == "gateway":
            res.after_stream = verbs_after_connect(res.twiml)

    async def _cleanup(self) -> None:
        if self._api is not None:
            self._api.end_call(self.result.call_sid)

    # --- Twilio's messages ----------------------------------------------------------------------

    def _ws_headers(self, url: str) -> dict[str, str]:
        if self._auth_token is None:
            return {}
        signed = self.result.twiml_stream_url or url
        return {"x-twilio-signature": twilio_signature(self._auth_token, signed, {})}

    def _connected_message(self) -> dict[str, Any]:
        return peer.connected_message()

    def _start_builder(self) -> MessageBuilder:
        res = self.result
        return partial(
            peer.start_message,
            account_sid=res.account_sid,
            call_sid=res.call_sid,
            stream_sid=res.stream_sid,
            custom_parameters=res.parameters,
        )

    def _media_builder(self, chunk: int) -> MessageBuilder:
        audio = self._audio[(chunk - 1) * FRAME_BYTES : chunk * FRAME_BYTES]
        audio += bytes([ULAW_SILENCE]) * (FRAME_BYTES - len(audio))
        return partial(
            peer.media_message,
            stream_sid=self.result.stream_sid,
            chunk=chunk,
            timestamp_ms=(chunk - 1) * 20,
            payload=audio,
        )

    def _dtmf_builder(self, digit: str) -> MessageBuilder:
        return partial(peer.dtmf_message, stream_sid=self.result.stream_sid, digit=digit)

    def _stop_builder(self) -> MessageBuilder:
        res = self.result
        return partial(
            peer.stop_message,
            stream_sid=res.stream_sid,
            account_sid=res.account_sid,
            call_sid=res.call_sid,
        )

    def _echo_builder(self, name: str) -> MessageBuilder:
        return partial(peer.mark_message, stream_sid=self.result.stream_sid, name=name)


def _code(carrier_code: str | None) -> str:
    return f" ({carrier_code})" if carrier_code else ""


async def _sleep_until(deadline: float) -> float:
    """Sleep until monotonic ``deadline``; return how late we woke (seconds, >= 0)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    return max(0.0, time.monotonic() - deadline)
