"""The Twilio REST calls the gateway makes: updating a live call (its TwiML, its status), and
placing an outbound call.

Updates serve the active agent's fallback when Gemini is gone for good, and the busy message
when a stream arrives with no room for it: the new TwiML (an apology or a ``<Dial>``) ends the
media stream and runs at once. Without the auth token the gateway falls back to the verbs
placed after ``</Connect>`` in the original TwiML instead.

Placing a call (``POST /calls`` on the gateway, :mod:`gateway.web.outbound`) is "Create a Call
resource": ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` with ``To``, ``From`` and
``Url`` (https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource). Twilio
answers 201 with the call resource (its ``sid``, ``status: queued``) and, once the callee
picks up, requests ``Url`` like an inbound call's webhook, with ``Direction=outbound-api``.
"""

from __future__ import annotations

import re

import httpx

_ALREADY_ENDED = 20404
#: Only SID-shaped values go into a REST URL path (they come from the call's own messages).
_SID = re.compile(r"[A-Za-z0-9]{2,64}")


class TwilioApiError(Exception):
    pass


class TwilioRest:
    """Twilio's REST API under the auth token that signs the webhooks; the account is given
    per call (``TWILIO_ACCOUNT_SID``, or the ``accountSid`` of the call's own stream)."""

    def __init__(
        self,
        auth_token: str,
        *,
        base_url: str = "https://api.twilio.com",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/2010-04-01/Accounts"
        self._auth_token = auth_token
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def update_call(self, account_sid: str, call_sid: str, twiml: str) -> None:
        """Replace the call's TwiML with ``twiml`` (a whole ``<Response>`` document)."""
        await self._update(account_sid, call_sid, {"Twiml": twiml})

    async def complete_call(self, account_sid: str, call_sid: str) -> None:
        """Hang the call up (``Status=completed``): it ends at once, and nothing after
        ``</Connect>`` runs."""
        await self._update(account_sid, call_sid, {"Status": "completed"})

    async def create_call(self, account_sid: str, to: str, from_: str, url: str) -> str:
        """Place a call from ``from_`` to ``to`` whose TwiML comes from ``url`` (POSTed, as the
        gateway's webhook route takes it); returns its CallSid. A refusal raises
        :class:`TwilioApiError` with Twilio's status and error code, never its message (it can
        echo the request)."""
        if not _SID.fullmatch(account_sid):
            raise TwilioApiError("create call: not a Twilio account SID")
        form = {"To": to, "From": from_, "Url": url, "Method": "POST"}
        auth = httpx.BasicAuth(account_sid, self._auth_token)
        try:
            response = await self._client.post(
                f"{self._base}/{account_sid}/Calls.json", data=form, auth=auth
            )
        except httpx.HTTPError as exc:
            raise TwilioApiError(f"create call: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise TwilioApiError(f"create call: HTTP {response.status_code} {_code(response)}")
        try:
            sid = response.json().get("sid")
        except (ValueError, AttributeError):
            sid = None
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            raise TwilioApiError("create call: the answer has no call SID")
        return sid

    async def _update(self, account_sid: str, call_sid: str, form: dict[str, str]) -> None:
        if not (_SID.fullmatch(account_sid) and _SID.fullmatch(call_sid)):
            raise TwilioApiError("update call: not a Twilio account or call SID")
        url = f"{self._base}/{account_sid}/Calls/{call_sid}.json"
        auth = httpx.BasicAuth(account_sid, self._auth_token)
        try:
            response = await self._client.post(url, data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise TwilioApiError(f"update call: {type(exc).__name__}") from None
        if response.status_code < 300:
            return
        if response.status_code == 404 and _code(response) == _ALREADY_ENDED:
            return  # the caller hung up meanwhile: nothing left to do
        raise TwilioApiError(f"update call: HTTP {response.status_code} {_code(response)}")


def _code(response: httpx.Response) -> int | None:
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None
