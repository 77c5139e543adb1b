"""The few Telnyx Call Control commands the gateway issues: answer, stream, hang up.

An outbound call is placed with "Dial" (``POST /v2/calls`` with ``connection_id``, ``to``,
``from`` and ``webhook_url``; https://developers.telnyx.com/api-reference/call-commands/dial):
Telnyx answers with the new call's ``call_control_id`` and sends that call's webhooks to
``webhook_url``, ``direction: "outgoing"``; the callee answers it, so the gateway only streams
it on ``call.answered``.

A Call Control application drives the call from JSON webhooks: the gateway answers
``call.initiated`` and starts a bidirectional RTP stream on ``call.answered`` (streaming before
the call is answered fails). Each command carries a ``command_id`` so Telnyx can de-duplicate a
retried request, and "call already ended" answers are treated as success: the goal state holds.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from gateway.carriers.telnyx import TELNYX_CODECS, call_control_state

#: client_state of the fallback announcement: its ``call.speak.ended`` webhook means hang up.
FALLBACK_STATE = base64.b64encode(b"callbridge-fallback").decode()
#: Telnyx's "Call has already ended" error code.
ALREADY_ENDED = "90018"


class TelnyxApiError(Exception):
    pass


class CallControl:
    """Call Control REST client; one per process, shared by all calls."""

    def __init__(self, api_key: str, *, base_url: str, client: httpx.AsyncClient | None = None):
        self._base = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def dial(self, connection_id: str, to: str, from_: str, webhook_url: str) -> str:
        """Place a call through the Call Control application ``connection_id``; its webhooks
        go to ``webhook_url``. Returns the call's ``call_control_id``; a refusal raises
        :class:`TelnyxApiError` with the status and Telnyx's error code, never its detail."""
        body = {"connection_id": connection_id, "to": to, "from": from_,
                "webhook_url": webhook_url, "webhook_url_method": "POST"}  # fmt: skip
        try:
            response = await self._client.post(
                f"{self._base}/calls", json=body, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise TelnyxApiError(f"dial: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise TelnyxApiError(f"dial: HTTP {response.status_code} {error_code(response)}")
        try:
            call_id = response.json()["data"]["call_control_id"]
        except (ValueError, KeyError, TypeError):
            call_id = None
        if not isinstance(call_id, str) or not call_id or len(call_id) > 256:
            raise TelnyxApiError("dial: the answer has no call_control_id")
        return call_id

    async def answer(self, call_control_id: str) -> None:
        await self._command(call_control_id, "answer", {})

    async def start_streaming(
        self,
        call_control_id: str,
        stream_url: str,
        codec: str,
        token: str,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        body = streaming_fields(stream_url, codec, token, parameters)
        await self._command(call_control_id, "streaming_start", body)

    async def hangup(self, call_control_id: str) -> None:
        await self._command(call_control_id, "hangup", {})

    async def speak(self, call_control_id: str, text: str) -> None:
        """Say ``text``; the gateway hangs up when its ``call.speak.ended`` arrives."""
        body = {"payload": text, "voice": "female", "language": "en-US",
                "client_state": FALLBACK_STATE}  # fmt: skip
        await self._command(call_control_id, "speak", body)

    async def transfer(self, call_control_id: str, to: str) -> None:
        await self._command(call_control_id, "transfer", {"to": to})

    async def reject(self, call_control_id: str) -> None:
        """Refuse an incoming call with a busy signal (over capacity, draining)."""
        await self._command(call_control_id, "reject", {"cause": "USER_BUSY"})

    async def _command(self, call_control_id: str, action: str, body: dict[str, Any]) -> None:
        url = f"{self._base}/calls/{quote(call_control_id, safe=':')}/actions/{action}"
        payload = {**body, "command_id": str(uuid.uuid4())}
        try:
            response = await self._client.post(url, json=payload, headers=self._headers)
        except httpx.HTTPError as exc:
            raise TelnyxApiError(f"{action}: {type(exc).__name__}") from None
        if response.status_code < 300:
            return
        if response.status_code == 422 and error_code(response) == ALREADY_ENDED:
            return
        raise TelnyxApiError(f"{action}: HTTP {response.status_code} {error_code(response)}")


def streaming_fields(
    stream_url: str, codec: str, token: str, parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``streaming_start`` body: an RTP stream both ways in ``codec`` (Telnyx may still
    stream the caller in the call's codec; see :mod:`gateway.carriers.telnyx`).

    ``parameters`` become ``custom_parameters`` ("Custom parameters to be sent as part of the
    WebSocket connection",
    https://developers.telnyx.com/api-reference/call-commands/streaming-start): the
    Call Control counterpart of TeXML's <Parameter>s, which the codec reads from ``start``.
    """
    fields: dict[str, Any] = {
        "stream_url": stream_url,
        "stream_track": "inbound_track",
        "stream_codec": codec,
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": codec,
        "stream_bidirectional_sampling_rate": TELNYX_CODECS[codec],
        # The token is in stream_url's path too; Telnyx also sends this one as the
        # x-telnyx-streaming-auth-token upgrade header (its AsyncAPI spec).
        "stream_auth_token": token,
        "client_state": call_control_state(token),
    }
    if parameters:
        fields["custom_parameters"] = [{"name": k, "value": v} for k, v in parameters.items()]
    return fields


def error_code(response: httpx.Response) -> str:
    """The first error code of a Telnyx error answer (``{"errors": [{"code": …}]}``), or ""."""
    try:
        errors = response.json().get("errors") or [{}]
        return str(errors[0].get("code", ""))[:20]
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
