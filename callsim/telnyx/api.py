"""A local, strict fake of Telnyx's Call Control REST API (``POST /v2/calls/{id}/actions/{cmd}``,
and "Dial", ``POST /v2/calls``), and of the TeXML REST "Update call"
(``POST /v2/texml/Accounts/{account_sid}/Calls/{call_sid}``).

"Dial" (https://developers.telnyx.com/api-reference/call-commands/dial) places an outgoing call:
``connection_id``, ``to``, ``from`` and ``webhook_url`` are checked, and the answer is the new
call (``{"data": {"call_control_id", "call_leg_id", "call_session_id", "is_alive": true,
"record_type": "call"}}``). Then the callee picks up: a
:class:`~callsim.callers.telnyx.TelnyxCaller` in Call Control mode, in the loop that entered the
simulator, sends ``call.initiated`` (``direction: "outgoing"``; an ``answer`` command on it is a
violation: the callee answers) and ``call.answered`` to ``webhook_url``, signed with
``signing_key`` when the simulator has one, and takes the stream the gateway then starts, with
:attr:`TelnyxApiSimulator.callee` as its options. Its record is
:meth:`TelnyxApiSimulator.outbound_result`. Without ``webhook_url`` (Telnyx would use the
connection's) the fake refuses the dial: it knows no connection's settings.

A Call Control gateway answers a call, starts its media stream and hangs it up through REST
commands, so a Telnyx caller simulator in that mode needs somewhere for those commands to land.
:class:`TelnyxApiSimulator` serves them on 127.0.0.1 with uvicorn in its own thread (so it adds
no tasks to the event loop under test, whose leftover tasks the tests count), checks every
request as Telnyx would (``Authorization: Bearer``, the JSON schema of each command, the call's
state) and tells the caller of each command in the caller's own loop.

The decisions are pure: :func:`apply_command` takes a :class:`CallRecord` and a request body and
returns the HTTP answer, the violations and the negotiated stream; the server only parses HTTP,
holds a lock and forwards. Error bodies use Telnyx's ``{"errors": [{code, title, detail}]}``
shape; 90018 ("Call has already ended") and 10005 ("Resource not found") are Telnyx's own codes,
the other codes are assumptions (marked below).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callsim.callees import Callees
from callsim.callers.result import ApiRequest
from callsim.serving import ServerThread
from callsim.telnyx.peer import Violation, new_call_control_id, new_uuid
from callsim.telnyx.webhook import CC_FIELDS, CallIds, StreamSetup, check_stream_url, negotiate
from callsim.twilio.peer import format_violation
from callsim.twilio.webhook import update_verbs

if TYPE_CHECKING:
    from callsim.callers.result import CallResult

__all__ = [
    "CallRecord",
    "Listener",
    "Outcome",
    "TelnyxApiSimulator",
    "apply_command",
    "apply_texml_update",
]

CallState = Literal["parked", "answered", "ended"]
#: What Telnyx dials: E.164 or a SIP URI; calls come from an E.164 number.
_DIAL_TO = re.compile(r"\+[1-9][0-9]{1,14}|sips?:\S+")
_DIAL_FROM = re.compile(r"\+[1-9][0-9]{1,14}")
_DIAL_NAMES: Final = """connection_id to from from_display_name webhook_url webhook_url_method
    client_state
    command_id timeout_secs time_limit_secs answering_machine_detection custom_headers
    sip_headers stream_url stream_track stream_codec stream_bidirectional_mode
    stream_bidirectional_codec stream_bidirectional_sampling_rate stream_auth_token
    audio_url media_name preferred_codecs record record_format billing_group_id"""
_DIAL_FIELDS: Final = frozenset(_DIAL_NAMES.split())
Listener = Callable[[ApiRequest, StreamSetup | None], None]
"""Told of every command on its call, in the loop that registered it."""

OK: Final = {"data": {"result": "ok"}}
_ENDED: Final = (
    "90018",
    "Call has already ended",
    "This call is no longer active and can't receive commands.",
)
_NOT_FOUND: Final = ("10005", "Resource not found", "")
_UNAUTHORIZED: Final = ("10009", "Authentication failed", "")  # assumed code
_INVALID: Final = ("10015", "Invalid parameter", "")  # assumed code
_WRONG_STATE: Final = ("90034", "Invalid call state", "")  # assumed code

_STREAM_FIELDS: Final = frozenset(
    {*CC_FIELDS.values(), "stream_bidirectional_target_legs", "stream_auth_token"}
)
_COMMON: Final = frozenset({"client_state", "command_id"})
_ANSWER_EXTRA: Final = """billing_group_id custom_headers sip_headers preferred_codecs
    send_silence_when_idle webhook_url webhook_url_method sound_modifications transcription
    transcription_config record record_channels record_format record_max_length
    record_timeout_secs record_track record_trim record_custom_file_name"""
_KNOWN_FIELDS: Final[dict[str, frozenset[str]]] = {
    "answer": _COMMON | _STREAM_FIELDS | set(_ANSWER_EXTRA.split()),
    "streaming_start": _COMMON | _STREAM_FIELDS | {"custom_parameters", "enable_dialogflow"},
    "streaming_stop": _COMMON | {"stream_id"},
    "hangup": _COMMON | {"custom_headers"},
    "reject": _COMMON | {"cause"},
    "speak": _COMMON | {"payload", "payload_type", "voice", "language", "service_level"},
    "transfer": _COMMON | {"to", "from", "from_display_name", "audio_url", "timeout_secs"},
}
_UNSIMULATED_NAMES: Final = """bridge playback_start playback_stop gather
    gather_using_audio gather_using_speak gather_stop record_start record_stop send_dtmf
    fork_start fork_stop transcription_start transcription_stop client_state_update refer enqueue
    leave_queue suppression_start suppression_stop ai_assistant_start ai_assistant_stop"""
_UNSIMULATED: Final = frozenset(_UNSIMULATED_NAMES.split())
#: TeXML "Update call" form fields (CamelCase, as the page insists).
_TEXML_UPDATE_FIELDS: Final = frozenset(
    [
        "Status",
        "Url",
        "Method",
        "FallbackUrl",
        "FallbackMethod",
        "StatusCallback",
        "StatusCallbackMethod",
        "Texml",
    ]
)
# Telnyx's enums (what it accepts at all), checked before the conversation rules of negotiate().
_ENUMS: Final[dict[str, frozenset[object]]] = {
    "stream_track": frozenset({"inbound_track", "outbound_track", "both_tracks"}),
    "stream_codec": frozenset({"PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16", "default"}),
    "stream_bidirectional_mode": frozenset({"mp3", "rtp"}),
    "stream_bidirectional_codec": frozenset({"PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16"}),
    "stream_bidirectional_sampling_rate": frozenset({8000, 16000, 22050, 24000, 48000}),
    "stream_bidirectional_target_legs": frozenset({"both", "self", "opposite"}),
}


@dataclass
class CallRecord:
    """One call as the API sees it; mutated only by :func:`apply_command` and ``end_call``."""

    call_control_id: str
    call_codec: str = "PCMU"
    require_wss: bool = False
    state: CallState = "parked"
    streaming: bool = False
    client_state: str | None = None
    command_ids: set[str] = field(default_factory=set)
    #: The TeXML AccountSid of a TeXML call (None: a Call Control call, no TeXML REST).
    account_sid: str | None = None
    #: ``outgoing``: dialled through the API (``POST /v2/calls``); the callee answers it.
    direction: Literal["incoming", "outgoing"] = "incoming"


@dataclass
class Outcome:
    """What the API answers one command, and what it found wrong with it."""

    status: int
    body: dict[str, Any]
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    setup: StreamSetup | None = None  # a stream this command started


def _error(status: int, error: tuple[str, str, str], detail: str = "") -> Outcome:
    code, title, default = error
    body = {"errors": [{"code": code, "title": title, "detail": detail or default}]}
    return Outcome(status, body)


def apply_command(call: CallRecord, action: str, body: object) -> Outcome:
    """Apply one Call Control command to ``call`` as Telnyx would (pure, no I/O)."""
    if action not in _KNOWN_FIELDS and action not in _UNSIMULATED:
        out = _error(404, _NOT_FOUND, f"unknown command {action!r}")
        text = f"POST .../actions/{action}: Telnyx has no such command"
        out.violations.append(format_violation(Violation.API_UNKNOWN_ACTION, text))
        return out
    if not isinstance(body, dict):
        out = _error(422, _INVALID, "the body must be a JSON object")
        text = f"{action}: body is {type(body).__name__}, not a JSON object"
        out.violations.append(format_violation(Violation.API_BAD_REQUEST, text))
        return out
    if call.state == "ended":
        out = _error(422, _ENDED)
        if action != "hangup":  # a hang-up racing the caller's is normal
            out.warnings.append(f"{action} after the call ended (422 90018)")
        return out
    schema = _schema_violations(action, body)
    if schema:
        out = _error(422, _INVALID, "; ".join(schema))
        out.violations += schema
        return out
    command_id = body.get("command_id")
    if isinstance(command_id, str) and command_id in call.command_ids:
        return Outcome(200, OK, warnings=[f"{action}: repeated command_id, ignored as a retry"])
    out = _transition(call, action, body)
    if 200 <= out.status < 300:
        if isinstance(command_id, str):
            call.command_ids.add(command_id)
        if isinstance(body.get("client_state"), str):
            call.client_state = body["client_state"]
    unknown = sorted(body.keys() - _KNOWN_FIELDS.get(action, body.keys()))
    if unknown:
        out.warnings.append(f"{action}: fields not in Telnyx's schema, ignored: {unknown}")
    return out


def apply_texml_update(call: CallRecord, account_sid: str, form: dict[str, str]) -> Outcome:
    """Apply one TeXML REST "Update call" to ``call`` as Telnyx would (pure, no I/O).

    New ``Texml`` (or ``Status=completed``) ends the call's ``<Connect><Stream>`` and runs at
    once, so the verbs after ``</Connect>`` never run; a ``<Dial>`` hands the caller on.
    https://developers.telnyx.com/api-reference/texml-rest-commands/update-call
    """
    if call.account_sid is None or call.account_sid != account_sid:
        out = _error(404, _NOT_FOUND, f"no TeXML call {call.call_control_id!r} on {account_sid!r}")
        text = f"TeXML update on account {account_sid!r}, which is not the call's AccountSid"
        out.violations.append(format_violation(Violation.API_UNKNOWN_CALL, text))
        return out
    if call.state == "ended":
        out = _error(422, _ENDED)  # assumed: Call Control's code; the TeXML page lists none
        out.warnings.append("TeXML update after the call ended (422 90018)")
        return out
    try:
        verbs = update_verbs(form, "Texml")
    except ValueError as exc:
        out = _error(422, _INVALID, str(exc))
        out.violations.append(format_violation(Violation.API_BAD_REQUEST, f"TeXML update: {exc}"))
        return out
    unknown = sorted(form.keys() - _TEXML_UPDATE_FIELDS)
    call.state, call.streaming = "ended", False  # the stream is over; a <Dial> is someone else's
    dialled = any(v.startswith(("Dial:", "Sip:")) for v in verbs)
    body = {"sid": call.call_control_id, "account_sid": account_sid,
            "status": "in-progress" if dialled else "completed"}  # fmt: skip
    out = Outcome(200, body)
    if unknown:
        out.warnings.append(f"TeXML update: fields not in Telnyx's schema, ignored: {unknown}")
    return out


def _transition(call: CallRecord, action: str, body: dict[str, Any]) -> Outcome:
    def wrong_state(why: str) -> Outcome:
        out = _error(422, _WRONG_STATE, why)
        out.violations.append(format_violation(Violation.CALL_CONTROL_ORDER, f"{action}: {why}"))
        return out

    if action == "answer":
        if call.direction == "outgoing":
            return wrong_state("an outgoing call is answered by the callee, not by answer")
        if call.state != "parked":
            return wrong_state("the call is already answered")
        call.state = "answered"
        return _start_stream(call, body) if "stream_url" in body else Outcome(200, OK)
    if action == "streaming_start":
        if call.state == "parked":
            return wrong_state(
                "the call is not answered yet (Telnyx fails it): answer on call.initiated and "
                "stream on call.answered, or pass stream_url with answer"
            )
        if call.streaming:
            return wrong_state("a stream is already running; Telnyx allows one per call")
        return _start_stream(call, body)
    if action == "streaming_stop":
        if not call.streaming:
            return wrong_state("no stream is running")
        call.streaming = False
        return Outcome(200, OK)
    if action == "reject":
        if call.state != "parked":
            return wrong_state("only a call that is not answered yet can be rejected")
        call.state = "ended"
        return Outcome(200, OK)
    if action == "hangup":
        call.state, call.streaming = "ended", False
        return Outcome(200, OK)
    if action in ("speak", "transfer"):
        if call.state != "answered":
            return wrong_state(f"only an answered call can {action}")
        missing = "payload" if action == "speak" else "to"
        if not isinstance(body.get(missing), str) or not body[missing]:
            return _error(422, _INVALID, f"{missing} is required")
        if action == "transfer":
            call.state, call.streaming = "ended", False  # the caller is now someone else's
        return Outcome(200, OK)
    return Outcome(200, OK, warnings=[f"{action} accepted but not simulated"])


def _start_stream(call: CallRecord, body: dict[str, Any]) -> Outcome:
    setup = StreamSetup()
    setup.url, setup.violations, setup.warnings = check_stream_url(
        body.get("stream_url"), require_wss=call.require_wss, field_name="stream_url"
    )
    negotiate(body, CC_FIELDS, call_codec=call.call_codec, out=setup)
    for item in body.get("custom_parameters") or ():
        setup.parameters[item["name"]] = item["value"]
    if isinstance(body.get("stream_auth_token"), str):
        setup.auth_token = body["stream_auth_token"]
    call.streaming = setup.url is not None
    return Outcome(200, OK, list(setup.violations), list(setup.warnings), setup)


def _schema_violations(action: str, body: dict[str, Any]) -> list[str]:
    """Values Telnyx itself refuses with 422: wrong types, values outside its enums."""
    found: list[str] = []

    def bad(text: str) -> None:
        found.append(format_violation(Violation.API_INVALID_PARAMETER, f"{action}: {text}"))

    for name in ("command_id", "stream_url", "stream_auth_token"):
        if name in body and not isinstance(body[name], str):
            bad(f"{name} must be a string, got {type(body[name]).__name__}")
    state = body.get("client_state")
    if state is not None and not _is_base64(state):
        bad(f"client_state must be base64, got {str(state)[:40]!r}")
    if action == "streaming_start" and "stream_url" not in body:
        bad("stream_url is required")
    if action in ("answer", "streaming_start"):
        for name, allowed in _ENUMS.items():
            value = body.get(name)
            if name in body and (type(value) not in (str, int) or value not in allowed):
                bad(f"{name}={value!r} is not one of {sorted(map(str, allowed))} (case-sensitive)")
    params = body.get("custom_parameters")
    if params is not None and not (
        isinstance(params, list)
        and all(
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("value"), str)
            for p in params
        )
    ):
        found.append(
            format_violation(
                Violation.PARAMETER_INVALID,
                f"{action}: custom_parameters must be a list of {{name, value}} strings",
            )
        )
    return found


def _is_base64(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass
class _Registration:
    loop: asyncio.AbstractEventLoop
    listener: Listener


class TelnyxApiSimulator:
    """The fake API server; use as ``async with TelnyxApiSimulator() as api: ...``.

    Point the gateway at ``api.base_url`` (``TELNYX_API_BASE``) with ``api.api_key``
    (``TELNYX_API_KEY``). Requests for calls no caller registered get 404 and land in
    :attr:`violations`; everything is in :attr:`requests`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        connection_id: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.api_key = api_key or "KEY" + secrets.token_hex(16).upper()
        #: The Call Control application a dial must name (None: any).
        self.connection_id = connection_id
        #: Signs the webhooks of the calls it dials (as the portal's key pair would).
        self.signing_key = signing_key
        #: Options of the :class:`~callsim.callers.telnyx.TelnyxCaller` that answers each
        #: call dialled here (``speech``, ``linger_s``, ``dtmf``, ``call_codec``, ...).
        self.callee: dict[str, Any] = {}
        self._home: asyncio.AbstractEventLoop | None = None
        self._callees = Callees()
        self._lock = threading.Lock()
        self._calls: dict[str, CallRecord] = {}
        self._listeners: dict[str, _Registration] = {}
        self._requests: list[ApiRequest] = []
        self._violations: list[str] = []
        app = Starlette(
            routes=[
                Route(
                    "/v2/calls/{call_id:str}/actions/{action:str}", self._command, methods=["POST"]
                ),
                Route("/v2/calls", self._dial, methods=["POST"]),
                Route(
                    "/v2/texml/Accounts/{account_sid:str}/Calls/{call_sid:str}",
                    self._texml_update,
                    methods=["POST"],
                ),
                Route(
                    "/{path:path}", self._unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
                ),
            ]
        )
        self._serving = ServerThread(app, name="fake Telnyx API", log_level="warning")

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (known once entered)."""
        return self._serving.port

    @property
    def base_url(self) -> str:
        """What ``TELNYX_API_BASE`` must be, e.g. ``http://127.0.0.1:PORT/v2``."""
        return f"http://127.0.0.1:{self.port}/v2"

    @property
    def requests(self) -> list[ApiRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        """Violations not attributable to a registered call (unknown ids, unknown endpoints)."""
        with self._lock:
            return list(self._violations)

    async def __aenter__(self) -> TelnyxApiSimulator:
        self._home = asyncio.get_running_loop()  # where the callees of dialled calls run
        await self._serving.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._serving.stop()
        await self.end_callees()

    async def end_callees(self) -> None:
        """End the callees still on the line (their calls end as a hang-up would)."""
        await self._callees.end_all()

    async def outbound_result(self, call_control_id: str, within_s: float = 30.0) -> CallResult:
        """The callee's record of a call dialled here, once that call has ended."""
        return await self._callees.result(call_control_id, within_s)

    def register(
        self,
        call_control_id: str,
        listener: Listener,
        *,
        call_codec: str = "PCMU",
        require_wss: bool = False,
        answered: bool = False,
        account_sid: str | None = None,
        outgoing: bool = False,
    ) -> None:
        """Create a call; ``listener`` hears of every command on it, in the calling loop.

        ``account_sid``: the call is a TeXML call of that account, which the TeXML REST API
        (``POST /v2/texml/Accounts/{account_sid}/Calls/{call_sid}``) can update too.
        ``outgoing``: a call dialled here, which its callee answers (see :meth:`pick_up`).
        """
        record = CallRecord(call_control_id, call_codec, require_wss, account_sid=account_sid)
        if outgoing:
            record.direction = "outgoing"
        if answered:
            record.state = "answered"
        with self._lock:
            self._calls[call_control_id] = record
            self._listeners[call_control_id] = _Registration(asyncio.get_running_loop(), listener)

    def pick_up(self, call_control_id: str) -> None:
        """The callee of an outgoing call answered: the call can be streamed."""
        with self._lock:
            record = self._calls.get(call_control_id)
            if record is not None and record.state == "parked":
                record.state = "answered"

    def end_call(self, call_control_id: str) -> None:
        """The call ended on the carrier side: later commands get 422 90018."""
        with self._lock:
            record = self._calls.get(call_control_id)
            if record is not None:
                record.state, record.streaming = "ended", False

    def unregister(self, call_control_id: str) -> None:
        """Stop telling the caller; the call's record (ended) stays, as on Telnyx."""
        self.end_call(call_control_id)
        with self._lock:
            self._listeners.pop(call_control_id, None)

    # --- HTTP (runs in the server thread) -------------------------------------------------------

    async def _command(self, request: Request) -> JSONResponse:
        call_id = str(request.path_params["call_id"])
        action = str(request.path_params["action"])
        raw = await request.body()
        try:
            body: object = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        return self._answer(
            request, call_id, action, (action, "call_control_id"), body,
            lambda record: apply_command(record, action, body),
        )  # fmt: skip

    async def _dial(self, request: Request) -> JSONResponse:
        """Dial: check the request as Telnyx would, answer the new call, and have its callee
        pick up (in the loop that entered the simulator); see the module docstring."""
        auth = request.headers.get("authorization")
        raw = await request.body()
        try:
            body: object = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        ids: CallIds | None = None
        if auth != f"Bearer {self.api_key}":
            how = "missing" if auth is None else "wrong"
            out = _error(401, _UNAUTHORIZED, "the API key is missing or wrong")
            text = f"dial: Authorization is {how}; send Bearer <TELNYX_API_KEY>"
            out.violations.append(format_violation(Violation.API_UNAUTHORIZED, text))
        elif not isinstance(body, dict):
            out = _error(422, _INVALID, "the body must be a JSON object")
            text = "dial: the body is not a JSON object"
            out.violations.append(format_violation(Violation.API_BAD_REQUEST, text))
        elif (problem := self._dial_problem(body)) is not None:
            out = _error(422, _INVALID, problem)
            out.violations.append(format_violation(Violation.API_INVALID_PARAMETER, problem))
        else:
            ids = CallIds(
                call_control_id=new_call_control_id(),
                call_leg_id=new_uuid(),
                call_session_id=new_uuid(),
                connection_id=body["connection_id"],
                from_number=body["from"],
                to_number=body["to"],
            )
            out = Outcome(200, {"data": {
                "call_control_id": ids.call_control_id, "call_leg_id": ids.call_leg_id,
                "call_session_id": ids.call_session_id, "is_alive": True,
                "record_type": "call", "client_state": body.get("client_state"),
            }})  # fmt: skip
            unknown = sorted(body.keys() - _DIAL_FIELDS)
            if unknown:
                out.warnings.append(f"dial: fields not in Telnyx's schema, ignored: {unknown}")
        with self._lock:
            self._requests.append(
                ApiRequest(
                    time=time.monotonic(),
                    method="POST",
                    path=request.url.path,
                    action="dial",
                    body=body,
                    status=out.status,
                    violations=tuple(out.violations),
                    warnings=tuple(out.warnings),
                    auth="Bearer" if auth is not None and auth.startswith("Bearer ") else "",
                )
            )
            self._violations += out.violations
            if ids is not None:  # known to commands at once; the callee listens from its loop
                record = CallRecord(ids.call_control_id, direction="outgoing")
                self._calls[ids.call_control_id] = record
        if ids is not None and isinstance(body, dict) and self._home is not None:
            self._home.call_soon_threadsafe(self._callee_answers, ids, str(body["webhook_url"]))
        return JSONResponse(out.body, status_code=out.status)

    def _dial_problem(self, body: dict[str, Any]) -> str | None:
        """What Telnyx would refuse in a dial request (422), or None."""
        connection = body.get("connection_id")
        if not isinstance(connection, str) or not connection:
            return "dial: connection_id is required"
        if self.connection_id is not None and connection != self.connection_id:
            return f"dial: connection_id {connection[:40]!r} is not an application of this key"
        for name, pattern in (("to", _DIAL_TO), ("from", _DIAL_FROM)):
            value = body.get(name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                return f"dial: {name} must be an E.164 number (+ and digits), got {value!r:.40}"
        url = body.get("webhook_url")
        if not isinstance(url, str):
            return "dial: webhook_url is required here (the fake knows no connection's URL)"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"dial: webhook_url must be an absolute http(s) URL, got {url[:80]!r}"
        if body.get("webhook_url_method", "POST") != "POST":
            return "dial: the fake sends webhooks with POST only"
        return None

    def _callee_answers(self, ids: CallIds, webhook_url: str) -> None:
        """The callee of a dialled call picks up (runs in the home loop)."""
        # Deferred: the caller module imports this one (TelnyxCaller(api=...)).
        from callsim.callers.telnyx import TelnyxCaller

        callee = TelnyxCaller(
            webhook_url,
            webhook_path="",
            mode="call-control",
            api=self,
            outgoing=ids,
            signing_key=self.signing_key,
            **self.callee,
        )
        call_id = ids.call_control_id
        self._callees.start(call_id, callee.run(), name=f"telnyx-callee-{call_id[:12]}")

    async def _texml_update(self, request: Request) -> JSONResponse:
        account_sid = str(request.path_params["account_sid"])
        call_id = str(request.path_params["call_sid"])
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        return self._answer(
            request, call_id, "texml_update", ("TeXML update", "CallSid"), form,
            lambda record: apply_texml_update(record, account_sid, form),
        )  # fmt: skip

    def _answer(
        self,
        request: Request,
        call_id: str,
        action: str,
        named: tuple[str, str],
        body: object,
        apply: Callable[[CallRecord], Outcome],
    ) -> JSONResponse:
        """One request on a call, either API: authenticated, the call known, ``apply``'d;
        recorded, and told to the call's caller in its own loop. ``named``: what the request
        and the call id are called in a violation (``hangup``, ``call_control_id``)."""
        label, id_name = named
        auth = request.headers.get("authorization")
        with self._lock:
            record = self._calls.get(call_id)
            if auth != f"Bearer {self.api_key}":
                how = "missing" if auth is None else "wrong"
                text = f"{label}: Authorization is {how}; send Bearer <TELNYX_API_KEY>"
                out = _error(401, _UNAUTHORIZED, "the API key is missing or wrong")
                out.violations.append(format_violation(Violation.API_UNAUTHORIZED, text))
            elif record is None:
                out = _error(404, _NOT_FOUND, f"no call {call_id!r}")
                text = f"{label} on {id_name} {call_id!r}, which Telnyx never issued"
                out.violations.append(format_violation(Violation.API_UNKNOWN_CALL, text))
            else:
                out = apply(record)
            entry = ApiRequest(
                time=time.monotonic(),
                method="POST",
                path=request.url.path,
                action=action,
                body=body,
                status=out.status,
                violations=tuple(out.violations),
                warnings=tuple(out.warnings),
                auth="Bearer" if auth is not None and auth.startswith("Bearer ") else "",
            )
            self._requests.append(entry)
            registration = self._listeners.get(call_id) if record is not None else None
            if registration is None:
                self._violations += out.violations
        if registration is not None:
            # RuntimeError: the caller's loop has closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                registration.loop.call_soon_threadsafe(registration.listener, entry, out.setup)
        return JSONResponse(out.body, status_code=out.status)

    async def _unknown(self, request: Request) -> JSONResponse:
        text = f"{request.method} {request.url.path}: not a Call Control endpoint"
        with self._lock:
            self._requests.append(
                ApiRequest(time.monotonic(), request.method, request.url.path, "", None, 404)
            )
            self._violations.append(format_violation(Violation.API_UNKNOWN_ACTION, text))
        return _error_response(404, _NOT_FOUND, text)


def _error_response(status: int, error: tuple[str, str, str], detail: str) -> JSONResponse:
    return JSONResponse(_error(status, error, detail).body, status_code=status)
