"""The one TeXML REST call the gateway makes: replacing a live TeXML call's markup.

A TeXML call is held by its ``<Connect><Stream>``: closing the stream runs the verbs after
``</Connect>`` (the apology). To end the call after the agent's goodbye, or to transfer it,
the gateway replaces the call's TeXML instead, as it does with Twilio's TwiML: the stream ends
and the new document (``<Hangup/>``, ``<Dial>``) runs.

Update call: ``POST {TELNYX_API_BASE}/texml/Accounts/{account_sid}/Calls/{call_sid}``,
form-encoded with CamelCase keys (``Texml``, ``Status``), ``Authorization: Bearer`` the API key
(https://developers.telnyx.com/api-reference/texml-rest-commands/update-call). The account is
the webhook's ``AccountSid``, carried to the stream as a ``<Parameter>``; the call is the
``CallSid`` (``v3:…``, the call_control_id).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx

from gateway.carriers.telnyx_api import ALREADY_ENDED, error_code

#: Only id-shaped values go into a REST URL path: account ids are UUIDs, call ids ``v3:…``.
_ID = re.compile(r"[A-Za-z0-9:_-]{2,128}")


class TexmlApiError(Exception):
    """The update failed: the message names the status and Telnyx's error code, never the key."""


class TexmlRest:
    """TeXML REST client; one per process, shared by all calls."""

    def __init__(
        self, api_key: str, base_url: str, client: httpx.AsyncClient | None = None
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/texml/Accounts"
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def update_call(self, account_sid: str, call_sid: str, texml: str) -> None:
        """Replace the call's TeXML with ``texml`` (a whole ``<Response>`` document)."""
        await self._update(account_sid, call_sid, {"Texml": texml})

    async def complete_call(self, account_sid: str, call_sid: str) -> None:
        """Hang the call up (``Status=completed``, "Setting the status to completed ends the
        call"): nothing after ``</Connect>`` runs."""
        await self._update(account_sid, call_sid, {"Status": "completed"})

    async def _update(self, account_sid: str, call_sid: str, form: dict[str, str]) -> None:
        if not (_ID.fullmatch(account_sid) and _ID.fullmatch(call_sid)):
            raise TexmlApiError("update call: not a TeXML account or call id")
        url = f"{self._base}/{quote(account_sid)}/Calls/{quote(call_sid, safe=':')}"
        try:
            response = await self._client.post(url, data=form, headers=self._headers)
        except httpx.HTTPError as exc:
            raise TexmlApiError(f"update call: {type(exc).__name__}") from None
        if response.status_code < 300:
            return
        code = error_code(response)
        # Call Control's "already ended" code: the TeXML update page documents no such answer;
        # an ended call answered with it is taken as done, as the goal state holds.
        if response.status_code in (404, 422) and code == ALREADY_ENDED:
            return  # the caller hung up meanwhile: nothing left to do
        raise TexmlApiError(f"update call: HTTP {response.status_code} {code}")
