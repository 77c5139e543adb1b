"""A simulated Telnyx phone call against a running gateway: TeXML or Call Control, then the
media-streaming WebSocket in real time.

:class:`TelnyxCaller` shares the real-time engine of :class:`~callsim.callers.twilio.StreamCaller`
(absolute 20 ms schedules, the playback-buffer model, mark echoes, violations) and plays Telnyx
around it:

* **TeXML**: POST the signed form to ``/telnyx/voice``, check the TeXML (``<Connect><Stream>``
  in ``rtp`` mode with a codec the simulator speaks) and stream to its URL.
* **Call Control**: POST signed JSON events and wait for the gateway's REST commands on the fake
  API (:class:`~callsim.telnyx.api.TelnyxApiSimulator`): ``call.initiated`` → ``answer``
  → ``call.answered`` → ``streaming_start`` (or stream fields on ``answer``) → stream →
  ``streaming.started`` … ``streaming.stopped`` → ``call.hangup``. A gateway ``hangup`` ends the
  call as Telnyx does (``stop``, then Telnyx closes the socket); a gateway that only closes the
  socket leaves the call up, which is a violation once ``hangup_grace_s`` has passed.

Speech is rendered at the inbound codec's own rate and encoded per codec (G.722 and L16 carry a
real 16 kHz signal); what the gateway sends back is checked against the *bidirectional* codec and
decoded to PCM16 on arrival for the heard timeline. ``reorder_window``/``duplicate_every`` model
Telnyx's unordered delivery, ``burst_frames`` a network that stalls and then catches up in
order (see :func:`~callsim.telnyx.peer.media_send_plan`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callsim.callers.audio import MAX_RATE, Segment, render_pcm
from callsim.callers.result import ApiRequest, CallEvent, CallResult, WebhookDelivery
from callsim.callers.state import StreamRules
from callsim.callers.twilio import (
    HangupMode,
    MessageBuilder,
    StreamCaller,
    default_ssl_context,
)
from callsim.telnyx import peer
from callsim.telnyx.api import TelnyxApiSimulator
from callsim.telnyx.peer import FORMATS, STREAM_AUTH_HEADER, Violation
from callsim.telnyx.webhook import (
    CallIds,
    SignatureMode,
    StreamSetup,
    call_event,
    check_texml,
    encode_json,
    signature_headers,
    texml_form,
)
from callsim.twilio.peer import format_violation
from callsim.twilio.webhook import update_verbs, verbs_after_connect
from gateway.audio.transcode import AudioFormat

__all__ = ["TelnyxCaller", "TelnyxMode"]

log = logging.getLogger("callsim.callers")

TelnyxMode = Literal["texml", "call-control"]
_Command = tuple[ApiRequest, StreamSetup | None]


class TelnyxCaller(StreamCaller):
    """One simulated inbound Telnyx call. Create, ``await run()`` once, inspect the result.

    ``speech`` is what the caller says, rendered at the negotiated inbound codec's rate (``run``
    raises ``ValueError`` if a tone cannot exist at that rate, e.g. 5 kHz on PCMU); ``linger_s``
    of silence follows, then the caller hangs up as ``hangup`` says. ``signing_key`` signs every
    webhook (``signature`` can make it wrong on purpose); a 401/403 answer to a wrongly signed
    webhook ends the call quietly, as expected.
    ``call_codec`` is the call leg's codec: what ``default`` means, and what the caller is
    streamed in when Telnyx cannot transcode to the codec asked for (it transcodes only between
    PCMU and PCMA); the gateway must answer in the bidirectional codec all the same (see
    :func:`~callsim.telnyx.webhook.negotiate`). ``g722_start_rate`` is the
    rate ``start`` reports for G.722 (8000, its RTP clock, as Telnyx lists it; or 16000).
    ``parameters_key`` is where ``start`` carries the stream parameters (unverified on Telnyx).
    ``command_timeout_s`` bounds each wait for a Call Control command; ``hangup_grace_s`` is how
    long a gateway that closed the stream has to hang the call up. ``outgoing`` makes this the
    callee of a call the fake API dialled (its ids; Call Control only): see
    :class:`~callsim.telnyx.api.TelnyxApiSimulator`. Other options as for
    :class:`~callsim.callers.twilio.TwilioCaller`.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        speech: Sequence[Segment] = (),
        linger_s: float = 1.0,
        dtmf: Sequence[tuple[float, str]] = (),
        hangup: HangupMode = "stop",
        mode: TelnyxMode = "texml",
        from_number: str = "+13122010094",
        to_number: str = "+13122123456",
        webhook_path: str = "/telnyx/voice",
        extra_form: Mapping[str, str] | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        signature: SignatureMode = "valid",
        api: TelnyxApiSimulator | None = None,
        call_codec: str = "PCMU",
        g722_start_rate: Literal[8000, 16000] = 8000,
        parameters_key: str | None = "custom_parameters",
        reorder_window: int = 0,
        duplicate_every: int = 0,
        burst_frames: int = 0,
        seed: int | None = None,
        stream_url: str | None = None,
        require_wss: bool = False,
        command_timeout_s: float = 5.0,
        hangup_grace_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        use_env_proxy: bool = False,
        webhook_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        on_event: Callable[[CallEvent], None] | None = None,
        outgoing: CallIds | None = None,
    ) -> None:
        if outgoing is not None and mode != "call-control":
            raise ValueError("an outgoing call (outgoing=) is a Call Control call")
        if mode not in ("texml", "call-control"):
            raise ValueError(f"mode must be texml or call-control, got {mode!r}")
        if mode == "call-control" and api is None:
            raise ValueError("call-control mode needs api=TelnyxApiSimulator(...)")
        if signature not in ("valid", "tampered", "stale", "missing"):
            raise ValueError(f"signature must be valid, tampered, stale or missing: {signature!r}")
        if call_codec not in FORMATS:
            raise ValueError(f"call_codec must be one of {sorted(FORMATS)}, got {call_codec!r}")
        if reorder_window < 0 or duplicate_every < 0 or burst_frames < 0:
            raise ValueError("reorder_window, duplicate_every and burst_frames must be >= 0")
        if reorder_window > 1 and burst_frames > 1:
            raise ValueError("give reorder_window or burst_frames, not both")
        self._speech = tuple(speech)
        fmt = FORMATS[call_codec]
        # Rendered at 16 kHz to size the call (any tone below 8 kHz renders); re-rendered at
        # the negotiated inbound rate, which refuses a tone above its Nyquist frequency.
        self._pcm = (MAX_RATE, render_pcm(self._speech, MAX_RATE))
        frame_pcm = 2 * MAX_RATE // 50
        call_control_id = outgoing.call_control_id if outgoing else peer.new_call_control_id()
        super().__init__(
            CallResult(
                webhook_url=gateway_url.rstrip("/") + webhook_path,
                call_sid=call_control_id,
                account_sid=peer.new_uuid(),
                stream_sid=peer.new_uuid(upper=True),
                carrier="telnyx",
                mode=mode,
                codec=call_codec,
                bidirectional_codec=call_codec,
                heard_rate=fmt.sample_rate,
                heard_encoding="pcm16",
                call_session_id=outgoing.call_session_id if outgoing else peer.new_uuid(),
            ),
            audio_chunks=math.ceil(len(self._pcm[1]) / frame_pcm),
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
        res = self.result
        self._outgoing = outgoing is not None
        self._ids = outgoing or CallIds(
            call_control_id=call_control_id,
            call_leg_id=peer.new_uuid(),
            call_session_id=res.call_session_id,
            connection_id=str(uuid.uuid4().int)[:19],  # Telnyx connection ids are numeric
            from_number=from_number,
            to_number=to_number,
        )
        self._mode, self._api = mode, api
        self._extra_form = dict(extra_form or {})
        self._key, self._signature = signing_key, signature
        self._call_codec, self._g722_rate = call_codec, g722_start_rate
        self._parameters_key = parameters_key
        self._plan = peer.media_send_plan(
            self._total_chunks,
            window=max(reorder_window, burst_frames),
            duplicate_every=duplicate_every,
            rng=random.Random(seed),
            shuffle=burst_frames <= 1,
        )
        self._reordering = reorder_window > 1 or duplicate_every > 0 or burst_frames > 1
        self._held: dict[int, dict[str, Any]] = {}
        self._stream_url_override, self._require_wss = stream_url, require_wss
        self._command_timeout, self._grace = command_timeout_s, hangup_grace_s
        self._inbound: AudioFormat = fmt
        self.frames: list[bytes] = []
        """The encoded inbound payloads, one per 20 ms (speech then linger), once negotiated."""
        self._client_state: str | None = None
        self._stream_auth_token: str | None = None
        self._commands: list[_Command] = []
        self._cursor = 0
        self._api_changed = asyncio.Event()
        self._api_hangup = False
        self._commands_ran: list[str] = []  # what the API commands ran on the call (after_stream)
        self._reached = self._answered = self._streamed = self._done = False
        self._http: httpx.AsyncClient | None = None
        self._side_task: asyncio.Task[Any] | None = None

    # --- setup ----------------------------------------------------------------------------------

    async def _setup(self) -> str | None:
        self._http = httpx.AsyncClient(
            timeout=self._webhook_timeout,
            trust_env=self._use_env_proxy,
            verify=self._ssl if self._ssl is not None else default_ssl_context(),
        )
        if self._mode == "texml":
            setup = await self._texml()
        else:
            setup = await self._call_control()
        if setup is None or setup.url is None:
            return None
        self._negotiated(setup)
        return self._stream_url_override or setup.url

    async def _texml(self) -> StreamSetup | None:
        res, ids = self.result, self._ids
        form = texml_form(
            call_sid=ids.call_control_id,
            account_sid=res.account_sid,
            call_session_id=ids.call_session_id,
            connection_id=ids.connection_id,
            from_number=ids.from_number,
            to_number=ids.to_number,
            extra=self._extra_form,
        )
        body = urlencode(form).encode()
        response = await self._post("texml", body, "application/x-www-form-urlencoded")
        if response is None or self._refused(response.status_code):
            return None
        res.twiml = response.text
        setup = check_texml(
            status=response.status_code,
            content_type=response.headers.get("content-type"),
            body=response.content,
            require_wss=self._require_wss,
            call_codec=self._call_codec,
        )
        res.twiml_stream_url = setup.url
        self._report(setup)
        if self._api is not None and setup.url is not None:  # the gateway may hang up via API
            self._register(answered=True, account_sid=res.account_sid)
        return setup

    async def _call_control(self) -> StreamSetup | None:
        self._register(answered=False)
        if self._outgoing:
            return await self._pick_up()
        initiated = {"direction": "incoming", "state": "parked", "client_state": None}
        response = await self._event("call.initiated", initiated)
        if response is None or self._refused(response.status_code):
            return None
        self._reached = True
        answer = await self._wait_command(
            {"answer", "reject", "hangup"}, "answer", "call.initiated"
        )
        if answer is None or answer[0].action != "answer":
            return None
        self._answered = True
        streaming = answer[1]
        answered: dict[str, Any] = {"client_state": self._client_state, "state": "answered"}
        if streaming is not None:
            answered |= {"stream_url": streaming.url, "stream_track": "inbound_track"}
        await self._event("call.answered", answered)
        if streaming is None:
            return await self._streaming_started()
        self._report(streaming, with_violations=False)  # the API request carried them
        return streaming

    async def _pick_up(self) -> StreamSetup | None:
        """The callee's side of a call the gateway dialled: ``call.initiated`` (outgoing,
        ``bridging``), which the gateway must not answer; the callee answers, so
        ``call.answered`` follows at once; then the gateway's ``streaming_start``."""
        assert self._api is not None
        initiated = {"direction": "outgoing", "state": "bridging", "client_state": None}
        response = await self._event("call.initiated", initiated)
        if response is None or self._refused(response.status_code):
            return None
        self._reached = self._answered = True
        self._api.pick_up(self._ids.call_control_id)
        answered = {"direction": "outgoing", "state": "answered", "client_state": None}
        await self._event("call.answered", answered)
        return await self._streaming_started()

    async def _streaming_started(self) -> StreamSetup | None:
        """After ``call.answered``: the gateway's ``streaming_start`` (None if it hung up)."""
        started = await self._wait_command(
            {"streaming_start", "hangup"}, "streaming_start", "call.answered"
        )
        streaming = started[1] if started is not None else None
        if streaming is not None:
            self._report(streaming, with_violations=False)  # the API request carried them
        return streaming

    def _negotiated(self, setup: StreamSetup) -> None:
        """Adopt the stream's codecs: render what the caller says, arm the strict checker."""
        res, inbound, outbound = self.result, setup.inbound, setup.outbound
        res.codec, res.bidirectional_codec = inbound.encoding, outbound.encoding
        res.heard_rate = outbound.sample_rate
        self._inbound = inbound
        rate, pcm = self._pcm
        if rate != inbound.sample_rate:
            pcm = render_pcm(self._speech, inbound.sample_rate)
        frame_pcm = 2 * inbound.samples_per_frame
        speech = pcm[: self._audio_chunks * frame_pcm].ljust(self._audio_chunks * frame_pcm, b"\0")
        encoded = peer.encoder_for(inbound)(speech.ljust(self._total_chunks * frame_pcm, b"\0"))
        size = inbound.frame_bytes
        self.frames = [encoded[i * size : (i + 1) * size] for i in range(self._total_chunks)]
        self._state.use_rules(
            StreamRules(
                parse=partial(peer.parse_gateway_frame, fmt=outbound, stream_id=res.stream_sid),
                frame_bytes=outbound.frame_bytes,
                tick_bytes=2 * outbound.samples_per_frame,
                silence=0,
                decode=peer.decoder_for(outbound),
            )
        )

    def _report(self, setup: StreamSetup, *, with_violations: bool = True) -> None:
        self.result.parameters = dict(setup.parameters)
        self._stream_auth_token = setup.auth_token
        if with_violations:
            self.result.warnings += setup.warnings
            for text in setup.violations:
                self._violation(text)

    # --- after the stream -----------------------------------------------------------------------

    async def _after_stream(self) -> None:
        res = self.result
        if self._side_task is not None:
            await asyncio.wait([self._side_task], timeout=self._webhook_timeout)
        if self._mode != "call-control" or not self._reached:
            # TeXML ends with its stream: the update's TeXML runs, or else the verbs after
            # </Connect> when the gateway closed the stream itself (a caller's hang-up: none).
            if self._commands_ran:
                res.after_stream = list(self._commands_ran)
            elif res.closed_by == "gateway":
                res.after_stream = verbs_after_connect(res.twiml)
            return  # a refused or failed first webhook: no call
        stream = {"client_state": self._client_state, "stream_url": self.result.stream_url}
        if self._streamed:
            await self._event("streaming.stopped", stream)
        if self._api_hangup:
            source = "callee"
        elif not self._streamed or self.result.closed_by == "caller":
            source = "caller"  # hung up, or gave up waiting for an answer or a stream
        elif await self._after_close_commands():
            source = "callee"
        else:
            text = (
                "the gateway closed the media stream but did not hang up (POST "
                f"/v2/calls/{{id}}/actions/hangup) within {self._grace} s; on Telnyx the caller "
                "is left in dead air"
            )
            self._violation(format_violation(Violation.CALL_LEFT_UP, text))
            source = "caller"
        assert self._api is not None
        self._api.end_call(self._ids.call_control_id)
        ended: dict[str, Any] = {"client_state": self._client_state, "state": "hangup"}
        if self._answered:
            ended |= {"hangup_cause": "normal_clearing", "hangup_source": source}
        elif self._api_hangup:
            ended |= {"hangup_cause": "call_rejected", "hangup_source": source}
            ended["sip_hangup_cause"] = "603"
        else:
            ended |= {"hangup_cause": "originator_cancel", "hangup_source": source}
            ended["sip_hangup_cause"] = "487"
        await self._event("call.hangup", ended)
        res.after_stream = list(self._commands_ran)

    async def _after_close_commands(self) -> bool:
        """The gateway closed the stream: it must now end the call through the API.

        ``hangup`` or ``transfer`` ends it; ``speak`` is played (``call.speak.started``, a
        pause as long as the words, ``call.speak.ended`` with its client_state, as Telnyx
        sends them) and the gateway must then hang up.
        """
        command = await self._wait_command({"hangup", "transfer", "speak"}, "", "")
        if command is None:
            return False
        request = command[0]
        if request.action != "speak":
            return True
        body = request.body if isinstance(request.body, dict) else {}
        state = {"client_state": body.get("client_state")}
        await self._event("call.speak.started", state)
        await asyncio.sleep(min(2.0, 0.02 * len(str(body.get("payload", "")))))
        await self._event("call.speak.ended", {**state, "status": "completed"})
        return await self._wait_command({"hangup"}, "", "") is not None

    async def _cleanup(self) -> None:
        self._done = True
        if self._side_task is not None:
            self._side_task.cancel()
            outcomes = await asyncio.gather(self._side_task, return_exceptions=True)
            if isinstance(outcome := outcomes[0], Exception):
                log.error("streaming.started webhook failed", exc_info=outcome)
        if self._api is not None:
            self._api.unregister(self._ids.call_control_id)
        if self._http is not None:
            await self._http.aclose()

    # --- webhooks -------------------------------------------------------------------------------

    async def _event(self, event_type: str, payload: Mapping[str, Any]) -> httpx.Response | None:
        body = call_event(
            event_type,
            self._ids,
            event_id=str(uuid.uuid4()),
            occurred=peer.occurred_at(time.time()),
            delivered_to=self.result.webhook_url,
            payload=payload,
        )
        response = await self._post(event_type, encode_json(body), "application/json")
        if response is None or self._refused(response.status_code):
            return response
        if not 200 <= response.status_code < 300:
            text = f"{event_type}: HTTP {response.status_code}; Telnyx retries, then gives up"
            self._violation(format_violation(Violation.WEBHOOK_STATUS, text))
        return response

    async def _post(self, event: str, body: bytes, content_type: str) -> httpx.Response | None:
        """POST one signed webhook; record it (the first one also in ``webhook_status``)."""
        assert self._http is not None
        res = self.result
        mode: SignatureMode = self._signature if self._key is not None else "missing"
        headers = {"Content-Type": content_type, "User-Agent": "Telnyx Webhooks"}
        if self._key is not None:
            headers |= signature_headers(self._key, body, mode=mode, now=time.time())
        sent_at = time.monotonic()
        try:
            response = await self._http.post(res.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            detail = f"{event}: POST {res.webhook_url}: {type(exc).__name__}: {exc}"
            self._violation(format_violation(Violation.WEBHOOK_FAILED, detail))
            response = None
        status = None if response is None else response.status_code
        res.webhooks.append(WebhookDelivery(sent_at, event, status, mode))
        if not res.webhooks[:-1]:
            res.webhook_status = status
        self._emit("webhook", detail=f"{event} {status}")
        if self._key is not None and mode != "valid" and status is not None and status < 300:
            warning = (
                f"the gateway accepted a webhook with a {mode} signature ({event}); "
                "is TELNYX_PUBLIC_KEY set?"
            )
            if not any(w.startswith(warning[:50]) for w in res.warnings):
                res.warnings.append(warning)
        return response

    def _refused(self, status: int) -> bool:
        """A 401/403 to a webhook that was not validly signed is the right answer: no call."""
        valid = self._key is not None and self._signature == "valid"
        return not valid and status in (401, 403)

    # --- the fake API ---------------------------------------------------------------------------

    def _register(self, *, answered: bool, account_sid: str | None = None) -> None:
        assert self._api is not None
        self._api.register(
            self._ids.call_control_id,
            self._on_command,
            call_codec=self._call_codec,
            require_wss=self._require_wss,
            answered=answered,
            account_sid=account_sid,
            outgoing=self._outgoing,
        )

    def _on_command(self, request: ApiRequest, setup: StreamSetup | None) -> None:
        """A command reached the fake API (runs in this call's loop)."""
        if self._done:
            return
        res = self.result
        self._commands.append((request, setup))
        res.api_requests.append(request)
        res.warnings += request.warnings
        for text in request.violations:
            self._violation(text)
        self._emit("api_command", detail=f"{request.action} {request.status}")
        if request.accepted:
            body = request.body if isinstance(request.body, dict) else {}
            if isinstance(body.get("client_state"), str):
                self._client_state = body["client_state"]
            if request.action in ("hangup", "reject", "texml_update"):
                self._api_hangup = True
            self._ran_after(request.action, body)
            ends = ("hangup", "streaming_stop", "transfer", "texml_update")
            if request.action in ends and res.started_at is not None:
                self._hangup_by = "gateway"  # Telnyx sends stop and closes the socket
                self._hangup_requested = True
        self._api_changed.set()

    def _ran_after(self, action: str, body: dict[str, Any]) -> None:
        """Record what an accepted command runs on the call (``CallResult.after_stream``):
        a transfer dials (``Sip:`` for a SIP URI, as the TwiML form is recorded), a hang-up
        hangs up, a speak says, a TeXML update runs its new TeXML."""
        ran = self._commands_ran
        if action == "texml_update":
            ran += update_verbs(body, "Texml")
        elif action == "transfer":
            to = str(body.get("to", ""))
            ran.append(f"Sip:{to}" if to.startswith("sip") else f"Dial:{to}")
        elif action == "speak":
            ran.append(f"Say:{body.get('payload', '')}")
        elif action == "hangup" and self._streamed and self.result.closed_by != "caller":
            ran.append("Hangup")

    async def _wait_command(self, actions: set[str], want: str, after: str) -> _Command | None:
        """The next accepted command in ``actions``; None (a violation if ``want``) on timeout."""
        timeout = self._command_timeout if want else self._grace
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self._commands):
                command = self._commands[self._cursor]
                self._cursor += 1
                if command[0].accepted and command[0].action in actions:
                    return command
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._api_changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._api_changed.wait()
            except TimeoutError:
                pass
        if want:
            text = f"no {want} within {timeout} s of {after}; the caller would hear " + (
                "ringing until Telnyx gives up" if want == "answer" else "silence"
            )
            self._violation(format_violation(Violation.CALL_CONTROL_MISSING, text))
        return None

    # --- the stream -----------------------------------------------------------------------------

    def _on_started(self) -> None:
        self._streamed = True
        if self._api_hangup:  # hung up through the API while the stream was connecting
            self._hangup_by, self._hangup_requested = "gateway", True
        if self._mode == "call-control":
            payload = {"client_state": self._client_state, "stream_url": self.result.stream_url}
            self._side_task = asyncio.create_task(
                self._event("streaming.started", payload), name="telnyx-streaming-started"
            )

    def _on_hanging_up(self, by: Literal["caller", "gateway"]) -> None:
        if by == "caller" and self._api is not None:
            self._api.end_call(self._ids.call_control_id)  # a gateway hangup now gets 90018

    async def _send_media(self, chunk: int) -> None:
        if not self._reordering:
            await super()._send_media(chunk)
            return
        async with self._send_lock:
            self._held[chunk] = self._media_builder(chunk)(seq=self._take_seq())
            due = self._plan[chunk - 1]
            for number in due:
                await self._write(self._held[number])
            for number in due:
                self._held.pop(number, None)

    def _ws_headers(self, url: str) -> dict[str, str]:
        if self._stream_auth_token is None:
            return {}
        return {STREAM_AUTH_HEADER: self._stream_auth_token}

    def _connected_message(self) -> dict[str, Any]:
        return peer.connected_message(self._stream_auth_token)

    def _start_builder(self) -> MessageBuilder:
        res, ids, fmt = self.result, self._ids, self._inbound
        return partial(
            peer.start_message,
            stream_id=res.stream_sid,
            user_id=res.account_sid,
            call_control_id=ids.call_control_id,
            call_session_id=ids.call_session_id,
            from_number=ids.from_number,
            to_number=ids.to_number,
            client_state=self._client_state,
            encoding=fmt.encoding,
            sample_rate=self._g722_rate if fmt.encoding == "G722" else fmt.sample_rate,
            custom_parameters=res.parameters,
            parameters_key=self._parameters_key,
        )

    def _media_builder(self, chunk: int) -> MessageBuilder:
        return partial(
            peer.media_message,
            stream_id=self.result.stream_sid,
            chunk=chunk,
            timestamp_ms=(chunk - 1) * 20,
            payload=self.frames[chunk - 1],
        )

    def _dtmf_builder(self, digit: str) -> MessageBuilder:
        occurred = peer.occurred_at(time.time())
        return partial(
            peer.dtmf_message, stream_id=self.result.stream_sid, digit=digit, occurred=occurred
        )

    def _stop_builder(self) -> MessageBuilder:
        return partial(
            peer.stop_message,
            stream_id=self.result.stream_sid,
            user_id=self.result.account_sid,
            call_control_id=self._ids.call_control_id,
        )

    def _echo_builder(self, name: str) -> MessageBuilder:
        return partial(peer.mark_message, stream_id=self.result.stream_sid, name=name)
