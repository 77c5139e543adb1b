"""The one Twilio REST call the gateway makes: replacing a live call's TwiML.

Used for the active agent's fallback when Gemini is gone for good: the new TwiML (an apology
or a ``<Dial>``) ends the media stream and runs at once. Without credentials the gateway
falls back to the verbs placed after ``</Connect>`` in the original TwiML instead.
"""

from __future__ import annotations

import httpx

_ALREADY_ENDED = 20404


class TwilioApiError(Exception):
    pass


class TwilioRest:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str = "https://api.twilio.com",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}"
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def update_call(self, call_sid: str, twiml: str) -> None:
        url = f"{self._base}/Calls/{call_sid}.json"
        try:
            response = await self._client.post(url, data={"Twiml": twiml}, auth=self._auth)
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
