"""The hand-built audio message must be what the SDK itself would send, byte for meaning."""

from __future__ import annotations

import json
from typing import Any

from google.genai import Client, types
from google.genai.live import AsyncSession
from hypothesis import given
from hypothesis import strategies as st

from gateway.live.session import INPUT_MIME, realtime_audio_message


class _CapturingSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


API_CLIENT = Client(api_key="test-key")._api_client


async def _sdk_message(pcm: bytes) -> Any:
    socket = _CapturingSocket()
    session = AsyncSession(api_client=API_CLIENT, websocket=socket)  # type: ignore[arg-type]
    await session.send_realtime_input(audio=types.Blob(data=pcm, mime_type=INPUT_MIME))
    (message,) = socket.sent
    return json.loads(message)


@given(st.binary(max_size=4000))
async def test_fast_path_message_equals_the_sdks(pcm: bytes) -> None:
    assert json.loads(realtime_audio_message(pcm)) == await _sdk_message(pcm)


async def test_the_sdk_session_still_exposes_the_socket_the_fast_path_uses() -> None:
    session = AsyncSession(api_client=API_CLIENT, websocket=_CapturingSocket())  # type: ignore[arg-type]
    assert callable(getattr(getattr(session, "_ws", None), "send", None))
