"""A local fake of the Twilio REST endpoints a voice gateway uses: updating a live call, and
placing one (its callee included).

``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, form-encoded, HTTP Basic
``AccountSid:AuthToken``; ``Twiml=<Response>…</Response>`` replaces the call's TwiML and
``Status=completed`` ends it (https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource).
Twilio answers with the call resource as JSON, or an error object ``{code, message, more_info,
status}``: 20404 for a call it does not know, 20003 for failed authentication, 21220 for a call
that is no longer in progress.

What an update does to a call is what makes the fake worth having: on Twilio, new TwiML (or
``Status=completed``) ends the call's media stream (Twilio sends ``stop`` and closes the
websocket) and runs at once, so the verbs after ``</Connect>`` never run. A
:class:`~callsim.callers.twilio.TwilioCaller` given ``api=`` registers its call here and is told
of each update, in its own event loop, to play that part.

``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` ("Create a Call resource",
https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource) places a call:
``To``, ``From`` and ``Url`` are checked as Twilio checks them (error codes 21201, 21211,
21212, 21213, 21205; https://www.twilio.com/docs/api/errors) and the answer is 201 with the
call resource (``status: queued``, ``direction: outbound-api``). Then the callee picks up: the
fake requests ``Url`` as Twilio does, signed (``X-Twilio-Signature``), with
``Direction=outbound-api`` and ``CallStatus=in-progress``, and a
:class:`~callsim.callers.twilio.TwilioCaller` plays the callee on the TwiML's stream, with
:attr:`TwilioApiSimulator.callee` as its options (what it says, how long it stays). Its
:class:`~callsim.callers.result.CallResult` is :meth:`TwilioApiSimulator.outbound_result`.
Only ``Url`` fetched with ``Method=POST`` is simulated (``Twiml``, ``ApplicationSid`` and
``GET`` are violations here, though Twilio takes them).

Serve :attr:`TwilioApiSimulator.app` with any ASGI server (the tests use uvicorn on a free
port) and point the gateway's ``TWILIO_API_BASE`` at it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callsim.callees import Callees
from callsim.callers.result import ApiRequest
from callsim.twilio.peer import Violation, format_violation, new_sid
from callsim.twilio.webhook import update_verbs

if TYPE_CHECKING:
    from callsim.callers.result import CallResult

__all__ = ["TwilioApiSimulator", "UpdateListener"]

UpdateListener = Callable[[ApiRequest, list[str]], None]
"""Told of every accepted update of its call, with the verbs it runs
(see :func:`~callsim.twilio.webhook.update_verbs`)."""

_MORE_INFO = "https://www.twilio.com/docs/errors/"
#: What Twilio dials: E.164, or a SIP URI / Client identity (not simulated beyond the form).
_TO = re.compile(r"\+[1-9][0-9]{1,14}|(sip|client):\S+")
_FROM = re.compile(r"\+[1-9][0-9]{1,14}|client:\S+")
#: The form the callee's webhook adds to a new call's (callsim.twilio.webhook.webhook_form):
#: a REST-created call is answered by the time Twilio asks for its TwiML.
OUTBOUND_FORM = {"Direction": "outbound-api", "CallStatus": "in-progress"}


@dataclass
class _Call:
    account_sid: str
    loop: asyncio.AbstractEventLoop | None
    listener: UpdateListener | None
    in_progress: bool = True


class TwilioApiSimulator:
    """Twilio's Calls update endpoint; see the module docstring.

    With ``auth_token`` every request must carry ``Basic AccountSid:AuthToken`` for the account
    in its path (else 401, code 20003); without one any Basic credentials for that account pass.
    Requests for calls nobody registered get 404 code 20404, as Twilio answers for a call it
    does not know (the gateway takes that as "already ended"). Everything is in
    :attr:`requests`; violations not attributable to a registered call in :attr:`violations`.
    """

    def __init__(self, *, auth_token: str | None = None) -> None:
        self.auth_token = auth_token
        #: Options of the :class:`~callsim.callers.twilio.TwilioCaller` that answers each call
        #: placed here (``audio``, ``linger_s``, ``dtmf``, ``hangup``, ...).
        self.callee: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._requests: list[ApiRequest] = []
        self._violations: list[str] = []
        self._callees = Callees()
        base = "/2010-04-01/Accounts/{account:str}/Calls"
        self.app = Starlette(
            routes=[
                Route(base + ".json", self._create, methods=["POST"]),
                Route(base + "/{sid:str}", self._update, methods=["POST"]),
            ]
        )

    @property
    def requests(self) -> list[ApiRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    def register(
        self, account_sid: str, call_sid: str, listener: UpdateListener | None = None
    ) -> None:
        """A call in progress on ``account_sid``; ``listener`` hears of its accepted updates in
        the calling event loop (call from inside a running loop when giving one)."""
        loop = asyncio.get_running_loop() if listener is not None else None
        with self._lock:
            self._calls[call_sid] = _Call(account_sid, loop, listener)

    def end_call(self, call_sid: str) -> None:
        """The call ended (the caller hung up): later updates get 400 code 21220."""
        with self._lock:
            call = self._calls.get(call_sid)
            if call is not None:
                call.in_progress, call.listener = False, None

    async def outbound_result(self, call_sid: str, within_s: float = 30.0) -> CallResult:
        """The callee's record of a call placed here, once that call has ended."""
        return await self._callees.result(call_sid, within_s)

    async def end_callees(self) -> None:
        """End the callees still on the line (their calls end as a hang-up would)."""
        await self._callees.end_all()

    # --- HTTP -----------------------------------------------------------------------------------

    async def _create(self, request: Request) -> JSONResponse:
        """Create a Call resource; see the module docstring."""
        account = str(request.path_params["account"])
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        user, password = _basic(request.headers.get("authorization"))
        violations: list[str] = []
        sid = ""
        if user != account or (self.auth_token is not None and password != self.auth_token):
            status, body = _error(401, 20003, "Authenticate")
            text = "create call: send Basic auth as the path's AccountSid and the auth token"
            violations.append(format_violation(Violation.API_UNAUTHORIZED, text))
        elif (refusal := _create_refusal(form)) is not None:
            status, body = _error(400, *refusal)
            violations.append(format_violation(Violation.API_BAD_REQUEST, refusal[1]))
        else:
            sid = new_sid("CA")
            status, body = 201, _created_resource(account, sid, form)
        with self._lock:
            self._requests.append(_logged(request, "create", form, status, violations, user))
            self._violations += violations
            if sid:
                self._calls[sid] = _Call(account, None, None, in_progress=False)  # queued
        if sid:
            self._answer(account, sid, form)
        return JSONResponse(body, status_code=status)

    def _answer(self, account: str, sid: str, form: dict[str, str]) -> None:
        """The callee picks up: a TwilioCaller requests the call's Url and takes its stream."""
        # Deferred: the caller module imports this one (TwilioCaller(api=...)).
        from callsim.callers.twilio import TwilioCaller

        callee = TwilioCaller(
            form["Url"],
            webhook_path="",
            call_sid=sid,
            account_sid=account,
            from_number=form["From"],
            to_number=form["To"],
            extra_form=OUTBOUND_FORM,
            auth_token=self.auth_token,
            api=self,
            **self.callee,
        )
        self._callees.start(sid, callee.run(), name=f"twilio-callee-{sid}")

    async def _update(self, request: Request) -> JSONResponse:
        account = str(request.path_params["account"])
        raw_sid = str(request.path_params["sid"])
        sid = raw_sid.removesuffix(".json")
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        user, password = _basic(request.headers.get("authorization"))
        violations: list[str] = []
        verbs: list[str] = []
        with self._lock:
            call = self._calls.get(sid)
            if user != account or (self.auth_token is not None and password != self.auth_token):
                status, body = _error(401, 20003, "Authenticate")
                text = f"update {sid}: send Basic auth as the path's AccountSid and the auth token"
                violations.append(format_violation(Violation.API_UNAUTHORIZED, text))
            elif not raw_sid.endswith(".json") or call is None:
                status, body = _error(404, 20404, f"The requested resource {request.url.path} "
                                      "was not found")  # fmt: skip
            elif call.account_sid != account:
                status, body = _error(404, 20404, f"No call {sid} on account {account}")
            elif not call.in_progress:
                status, body = _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            else:
                try:
                    verbs = update_verbs(form)
                except ValueError as exc:
                    status, body = _error(400, 21201, f"Invalid update: {exc}")
                    text = f"update {sid}: {exc}"
                    violations.append(format_violation(Violation.API_BAD_REQUEST, text))
                else:
                    status, body = 200, _call_resource(account, sid, verbs)
                    # The stream has ended; Dial keeps the call up with someone else.
                    call.in_progress = any(v.startswith(("Dial:", "Sip:")) for v in verbs)
            entry = _logged(request, "update", form, status, violations, user)
            self._requests.append(entry)
            listener = call.listener if call is not None and status == 200 else None
            loop = call.loop if call is not None else None
            if call is None or listener is None:
                self._violations += violations
            if call is not None and status == 200:
                call.listener = None  # the stream is over: one update ends it
        if listener is not None and loop is not None:
            # RuntimeError: the caller's loop has closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(listener, entry, verbs)
        return JSONResponse(body, status_code=status)


def _logged(
    request: Request,
    action: str,
    form: dict[str, str],
    status: int,
    violations: list[str],
    user: str | None,
) -> ApiRequest:
    """One request as the fake records it (a POST: both of its routes take forms)."""
    return ApiRequest(
        time=time.monotonic(),
        method="POST",
        path=request.url.path,
        action=action,
        body=form,
        status=status,
        violations=tuple(violations),
        auth=f"Basic {user}" if user is not None else "",
    )


def _basic(header: str | None) -> tuple[str | None, str | None]:
    if header is None or not header.startswith("Basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, ValueError):
        return None, None
    user, _, password = decoded.partition(":")
    return user, password


def _error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "message": message, "more_info": f"{_MORE_INFO}{code}",
                    "status": status}  # fmt: skip


def _call_resource(account: str, sid: str, verbs: list[str]) -> dict[str, Any]:
    dialled = any(v.startswith(("Dial:", "Sip:")) for v in verbs)
    return {
        "sid": sid,
        "account_sid": account,
        "api_version": "2010-04-01",
        "status": "in-progress" if dialled else "completed",
        "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
    }


def _create_refusal(form: dict[str, str]) -> tuple[int, str] | None:
    """Twilio's error (code, message) for a Create Call form it refuses, or None."""
    to, from_, url = form.get("To", ""), form.get("From", ""), form.get("Url", "")
    if not to:
        return 21201, "No 'To' number is specified"
    if not from_:
        return 21213, "No 'From' number is specified"
    if not _TO.fullmatch(to):
        return 21211, f"Invalid 'To' Phone Number: {to[:40]}"
    if not _FROM.fullmatch(from_):
        return 21212, f"Invalid 'From' Phone Number: {from_[:40]}"
    if "Twiml" in form or "ApplicationSid" in form:
        return 21205, "the fake simulates calls whose TwiML comes from Url only"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return 21205, f"Url is not a valid URL: {url[:80]}"
    if form.get("Method", "POST") != "POST":
        return 21205, "the fake requests Url with Method=POST only"
    return None


def _created_resource(account: str, sid: str, form: dict[str, str]) -> dict[str, Any]:
    """The call resource Twilio answers a Create Call with (the fields a client reads)."""
    return {
        "sid": sid,
        "account_sid": account,
        "api_version": "2010-04-01",
        "to": form["To"],
        "from": form["From"],
        "status": "queued",
        "direction": "outbound-api",
        "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
    }
