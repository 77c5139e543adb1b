"""The Live simulator exercised through its real edges: the unmodified google-genai SDK (and a raw
websockets client where the SDK cannot go) over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from callsim.live.audio import tone_pcm16
from callsim.live.model import SCHEDULED_ANSWER, prompt_text_tokens
from callsim.live.script import Script, Step, ToolCallSpec
from callsim.live.server import LiveSimulator
from callsim.live.voices import voice_pitch_hz
from callsim.tls import generate_tls
from gateway.audio import analysis

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
TLS = generate_tls()
WAIT_S = 5.0
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
HANDOFF = types.FunctionDeclaration(
    name="handoff_conversation",
    description="Hand the caller to another agent.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "target": types.Schema(type=types.Type.STRING, enum=["billing_agent", "sales_agent"]),
            "reason": types.Schema(type=types.Type.STRING),
            "summary": types.Schema(type=types.Type.STRING),
        },
        required=["target", "reason", "summary"],
    ),
)


# --- helpers -----------------------------------------------------------------------------------


def fast_sim(**overrides: Any) -> LiveSimulator:
    """A simulator that thinks briefly and speaks 50x faster than real time."""
    options: dict[str, Any] = {"tls": TLS, "think_ms": 5, "speed": 50.0}
    options.update(overrides)
    return LiveSimulator(**options)


def sdk(
    sim: LiveSimulator, *, base_url: str | None = None, version: str = "v1beta"
) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=base_url or sim.base_url,
            api_version=version,
            async_client_args={"ssl": sim.tls.client_context()},
        ),
    )


def config(
    *,
    voice: str | None = None,
    instruction: str | None = None,
    tools: list[types.FunctionDeclaration] | None = None,
    resume: bool | str = False,
    manual_activity: bool = False,
) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=instruction,
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=voice)
            )
        )
        if voice
        else None,
        tools=[types.Tool(function_declarations=tools)] if tools else None,
        session_resumption=types.SessionResumptionConfig(
            handle=resume if isinstance(resume, str) else None
        )
        if resume
        else None,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
        )
        if manual_activity
        else None,
    )


@contextlib.asynccontextmanager
async def live(
    sim: LiveSimulator, cfg: types.LiveConnectConfig | None = None
) -> AsyncIterator[tuple[Any, Inbox]]:
    async with sdk(sim).aio.live.connect(model=MODEL, config=cfg or config()) as session:
        inbox = Inbox(session)
        try:
            yield session, inbox
        finally:
            await inbox.stop()


class Inbox:
    """Reads every server message in the background (looping over ``receive()``)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.messages: list[tuple[float, types.LiveServerMessage]] = []
        self.error: errors.APIError | None = None
        self._changed = asyncio.Event()
        self._cursor = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                async with contextlib.aclosing(self.session.receive()) as stream:
                    async for message in stream:
                        self.messages.append((time.monotonic(), message))
                        self._changed.set()
        except errors.APIError as exc:
            self.error = exc
            self._changed.set()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})

    async def next(
        self, predicate: Callable[[types.LiveServerMessage], object]
    ) -> types.LiveServerMessage:
        """The first message after the last one matched that satisfies ``predicate``."""
        return (await self.next_timed(predicate))[1]

    async def next_timed(
        self, predicate: Callable[[types.LiveServerMessage], object]
    ) -> tuple[float, types.LiveServerMessage]:
        """Like :meth:`next`, with the time the message arrived."""
        start = self._cursor
        async with asyncio.timeout(WAIT_S):
            while True:
                for index in range(start, len(self.messages)):
                    if predicate(self.messages[index][1]):
                        self._cursor = index + 1
                        return self.messages[index]
                start = len(self.messages)
                if self.error is not None:
                    raise self.error
                self._changed.clear()
                await self._changed.wait()

    async def closed(self) -> errors.APIError:
        """The APIError that ended ``receive()`` (the server closed the connection)."""
        async with asyncio.timeout(WAIT_S):
            while self.error is None:
                self._changed.clear()
                await self._changed.wait()
        return self.error

    def since(self, t0: float) -> list[types.LiveServerMessage]:
        return [m for t, m in self.messages if t >= t0]


def content(message: types.LiveServerMessage) -> types.LiveServerContent:
    return message.server_content or types.LiveServerContent()


def turn_complete(message: types.LiveServerMessage) -> bool:
    return bool(content(message).turn_complete)


def new_handle(message: types.LiveServerMessage) -> str | None:
    update = message.session_resumption_update
    return update.new_handle if update and update.resumable else None


def transcript(messages: list[types.LiveServerMessage]) -> str:
    return "".join(
        (piece.text or "")
        for m in messages
        if (piece := content(m).output_transcription) is not None
    )


def heard(message: types.LiveServerMessage) -> str:
    transcription = content(message).input_transcription
    assert transcription is not None
    return transcription.text or ""


def is_heard(message: types.LiveServerMessage) -> bool:
    return content(message).input_transcription is not None


def only_call(message: types.LiveServerMessage) -> types.FunctionCall:
    assert message.tool_call is not None
    assert message.tool_call.function_calls is not None
    (call,) = message.tool_call.function_calls
    return call


def cancelled_ids(message: types.LiveServerMessage) -> list[str]:
    assert message.tool_call_cancellation is not None
    return message.tool_call_cancellation.ids or []


def time_left(message: types.LiveServerMessage) -> str | None:
    assert message.go_away is not None
    return message.go_away.time_left


def audio(messages: list[types.LiveServerMessage]) -> bytes:
    return b"".join(m.data or b"" for m in messages)


def speech(seconds: float, hz: float = 1000.0) -> bytes:
    return tone_pcm16(hz, seconds, level_dbfs=-20.0, rate=16000)


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * round(16000 * seconds)


async def send_audio(
    session: Any, pcm: bytes, *, realtime: bool = False, media: bool = False
) -> None:
    """Send 16 kHz PCM in 20 ms chunks, at real time or as fast as possible."""
    for offset in range(0, len(pcm), 640):
        blob = types.Blob(data=pcm[offset : offset + 640], mime_type="audio/pcm;rate=16000")
        if media:
            await session.send_realtime_input(media=blob)
        else:
            await session.send_realtime_input(audio=blob)
        await asyncio.sleep(0.02 if realtime else 0)


async def say_text(session: Any, text: str = "hi") -> None:
    await session.send_client_content(
        turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
    )


async def text_turn(session: Any, inbox: Inbox) -> tuple[list[types.LiveServerMessage], str]:
    """Send a text turn; return its messages and the handle issued after it."""
    t0 = time.monotonic()
    await say_text(session)
    await inbox.next(turn_complete)
    handle_message = await inbox.next(new_handle)
    return inbox.since(t0), new_handle(handle_message) or ""


# --- setup and handshake -----------------------------------------------------------------------


async def test_setup_is_recorded() -> None:
    async with fast_sim() as sim:
        cfg = config(
            voice="Kore", instruction="Role: Triage\nBe brief.", tools=[HANDOFF], resume=True
        )
        async with live(sim, cfg):
            (record,) = await sim.wait_for_connections(1)
        assert record.api_version == "v1beta"
        assert record.method == "BidiGenerateContent"
        assert record.path == LIVE_PATH
        assert record.api_key == "test-key"
        assert "test-key" not in repr(record)
        assert record.model == f"models/{MODEL}"
        assert record.voice == "Kore"
        assert record.system_instruction == "Role: Triage\nBe brief."
        assert [d["name"] for d in record.function_declarations] == ["handoff_conversation"]
        assert record.resumption_requested
        assert record.handle_requested is None
        assert not record.resumed
        assert record.session_id == 1
        assert record.setup_raw is not None
        assert "setup" in record.setup_raw
        assert record.sent[0].kind == "setupComplete"
        await sim.wait_for(lambda: not record.is_open)
        assert record.closed_by == "client"
        assert record.close_code == 1000


async def test_double_slash_path_and_other_versions_are_accepted() -> None:
    async with fast_sim() as sim:
        client = sdk(sim, base_url=sim.base_url + "/", version="v1alpha")
        async with client.aio.live.connect(model=MODEL, config=config()):
            (record,) = await sim.wait_for_connections(1)
        assert record.path.startswith("//ws/")
        assert record.api_version == "v1alpha"


async def test_wrong_path_is_404_and_missing_key_is_401() -> None:
    async with fast_sim() as sim:
        base = sim.base_url.replace("https", "wss")
        ctx = sim.tls.client_context()
        with pytest.raises(InvalidStatus) as not_found:
            await ws_connect(base + "/ws/other", ssl=ctx)
        assert not_found.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as unauthorised:
            await ws_connect(base + LIVE_PATH, ssl=ctx)
        assert unauthorised.value.response.status_code == 401
        async with ws_connect(base + LIVE_PATH + "?key=raw", ssl=ctx) as ws:
            await ws.send(json.dumps({"setup": {"model": "models/x"}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
        assert sim.connections[0].api_key == "raw"
        assert len(sim.connections) == 1


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ({"clientContent": {"turnComplete": True}}, "the first message must be a setup"),
        ({"setup": {}}, "setup.model is required"),
    ],
)
async def test_bad_first_message_closes_1007(first: dict[str, Any], reason: str) -> None:
    async with fast_sim() as sim:
        uri = sim.base_url.replace("https", "wss") + LIVE_PATH + "?key=k"
        async with ws_connect(uri, ssl=sim.tls.client_context()) as ws:
            await ws.send(json.dumps(first))
            await ws.wait_closed()
        assert ws.close_code == 1007
        assert ws.close_reason == reason


@pytest.mark.parametrize("frames", ["binary", "text"])
async def test_frame_modes(frames: str) -> None:
    async with fast_sim(frames=frames) as sim:
        uri = sim.base_url.replace("https", "wss") + LIVE_PATH + "?key=k"
        async with ws_connect(uri, ssl=sim.tls.client_context()) as ws:
            await ws.send(json.dumps({"setup": {"model": "models/x"}}))
            reply = await ws.recv()
        assert isinstance(reply, bytes if frames == "binary" else str)
        async with live(sim) as (session, inbox):
            await say_text(session)
            await inbox.next(turn_complete)


async def test_setup_delay_holds_back_setup_complete() -> None:
    async with fast_sim(setup_delay_ms=150) as sim:
        started = time.monotonic()
        async with live(sim):
            assert time.monotonic() - started >= 0.15


# --- turns -------------------------------------------------------------------------------------


async def test_text_turn_gets_audio_transcription_turn_complete_and_handle() -> None:
    async with fast_sim() as sim:
        cfg = config(voice="Kore", instruction="Role: Portfolio advisor", resume=True)
        async with live(sim, cfg) as (session, inbox):
            turn, handle = await text_turn(session, inbox)
        said = "Hello, this is the Portfolio advisor. How can I help you today?"
        assert transcript(turn) == said
        pcm = audio(turn)
        assert len(pcm) == 2 * round(24000 * 0.06 * len(said))
        kore_hz = voice_pitch_hz("Kore")
        assert analysis.dominant_frequency(pcm, 24000) == pytest.approx(kore_hz, abs=2)
        assert handle == "sim-1-1"
        not_resumable = [m for m in turn if m.session_resumption_update and not new_handle(m)]
        assert len(not_resumable) == 1
        record = sim.connections[0]
        mime_types = {
            part.inline_data.mime_type
            for m in turn
            if (model_turn := content(m).model_turn) is not None
            for part in model_turn.parts or []
            if part.inline_data is not None
        }
        assert mime_types == {"audio/pcm;rate=24000"}
        summaries = record.sent_summaries()
        assert summaries[:2] == ["setupComplete", "sessionResumptionUpdate: not resumable"]
        assert summaries[-4:] == [
            "serverContent: generationComplete",
            "serverContent: turnComplete",
            "usageMetadata: totalTokenCount=" + summaries[-2].split("=")[1],
            "sessionResumptionUpdate: sim-1-1",
        ]
        assert sim.sessions[1].texts("text", "model") == ["hi", said]


async def test_realtime_text_is_a_text_trigger_and_no_handles_without_resumption() -> None:
    async with fast_sim() as sim, live(sim) as (session, inbox):
        await session.send_realtime_input(text="hello from text")
        await inbox.next(turn_complete)
        await inbox.next(lambda m: m.usage_metadata)
        record = sim.connections[0]
        assert record.realtime_texts == ["hello from text"]
        assert not any(m.session_resumption_update for _, m in inbox.messages)


async def test_caller_audio_gets_transcribed_and_answered() -> None:
    script = Script([Step(on="caller", hear="I want to sell my shares", say="Sure, one moment.")])
    async with fast_sim(script=script) as sim, live(sim) as (session, inbox):
        await send_audio(session, silence(0.2) + speech(0.5) + silence(0.5), media=True)
        assert heard(await inbox.next(is_heard)) == "I want to sell my shares"
        t0 = time.monotonic()
        await inbox.next(turn_complete)
        assert transcript(inbox.since(t0 - 1)) == "Sure, one moment."
        await send_audio(session, speech(0.7) + silence(0.5))
        assert heard(await inbox.next(is_heard)) == "caller utterance 2 (0.7 s)"
        await inbox.next(turn_complete)
        record = sim.connections[0]
        assert record.realtime_mime_types == ["audio/pcm;rate=16000"]
        assert len(record.audio_in) == 2 * 16000 * (1.2 + 1.2)
        assert record.audio_in_started_at is not None
        history = sim.sessions[1].history
        assert [(e.kind, e.text) for e in history if e.kind == "model"] == [
            ("model", "Sure, one moment."),
            ("model", "I understand. Let me help you with that."),
        ]


async def test_scheduled_answers_follow_the_caller_audio_received_not_its_turns() -> None:
    """With ``answer_every_s`` the model says ``answer_s`` of audio after every 0.5 s of caller
    audio received, speech or not, one answer after the other: a caller who never stops is
    neither an utterance nor a barge-in, and a declared handoff function is never called."""
    async with (
        fast_sim(answer_every_s=0.5, answer_s=0.3) as sim,
        live(sim, config(tools=[HANDOFF])) as (session, inbox),
    ):
        await send_audio(session, speech(1.0) + silence(0.6))  # at once: three answers due
        for _ in range(3):
            await inbox.next(turn_complete)
        await asyncio.sleep(0.1)  # nothing else follows
        sent = [m for _, m in inbox.messages]
        assert sum(turn_complete(m) for m in sent) == 3
        assert len(audio(sent)) == 3 * 2 * round(0.3 * 24000)
        assert not any(content(m).interrupted or m.tool_call or is_heard(m) for m in sent)
        history = sim.sessions[1].history
        assert [e.kind for e in history] == ["model"] * 3
        assert [e.text for e in history] == [SCHEDULED_ANSWER] * 3
        assert not any(e.interrupted for e in history)
        record = sim.connections[0]
        audio_at = record.sent_times("audio")
        done_at = record.sent_times("turnComplete")
        # In turn: each answer's audio ends before the next answer's audio starts.
        assert [sum(t < end for t in audio_at) for end in done_at] == [
            len(audio_at) // 3 * k for k in (1, 2, 3)
        ]


async def test_manual_activity_signals_delimit_the_utterance() -> None:
    async with fast_sim() as sim, live(sim, config(manual_activity=True)) as (session, inbox):
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await send_audio(session, silence(0.3))  # no energy needed: the client decides
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        assert heard(await inbox.next(is_heard)) == "caller utterance 1 (0.3 s)"
        await inbox.next(turn_complete)
        assert [kind for _, kind in sim.connections[0].activity] == ["activityStart", "activityEnd"]


async def test_barge_in_while_generating_interrupts_promptly() -> None:
    script = Script(
        [Step(on="text", say="A long answer that goes on.", seconds=3.0), Step(say="Okay.")]
    )
    async with fast_sim(script=script, speed=1.0) as sim, live(sim) as (session, inbox):
        await say_text(session)
        await inbox.next(lambda m: m.data)
        sent_at = time.monotonic()
        await send_audio(session, speech(0.12))  # onset needs 100 ms of speech
        received_at, _ = await inbox.next_timed(lambda m: content(m).interrupted)
        assert received_at - sent_at < 0.25
        after = await inbox.next(lambda m: content(m).turn_complete or m.data)
        assert turn_complete(after)
        record = sim.connections[0]
        (interrupted_at,) = record.sent_times("interrupted")
        assert record.audio_in_started_at is not None
        assert interrupted_at - record.audio_in_started_at < 0.2
        assert not record.sent_times("generationComplete")
        await send_audio(session, speech(0.3) + silence(0.45))
        await inbox.next(is_heard)
        await inbox.next(turn_complete)
        model_turns = [e for e in sim.sessions[1].history if e.kind == "model"]
        assert model_turns[0].interrupted
        assert 0 < len(model_turns[0].text) < len("A long answer that goes on.")
        assert not model_turns[1].interrupted


async def test_barge_in_counts_audio_still_playing_at_real_time() -> None:
    script = Script(
        [Step(on="text", say="Two seconds of audio.", seconds=2.0), Step(on="text", say="Short.")]
    )
    async with fast_sim(script=script) as sim, live(sim) as (session, inbox):
        await say_text(session)
        await inbox.next(turn_complete)  # generated at 50x: done long before it has played
        await send_audio(session, speech(0.12))
        await inbox.next(lambda m: content(m).interrupted)
        await send_audio(session, silence(0.45))
        await inbox.next(turn_complete)  # closes the interrupted turn
        await inbox.next(turn_complete)  # the answer to the utterance
        await say_text(session)  # interrupts the answer's playback, then says "Short."
        await inbox.next(turn_complete)
        t0 = time.monotonic()
        await asyncio.sleep(0.45)  # "Short." (0.4 s) has finished playing
        await send_audio(session, speech(0.3) + silence(0.45))
        await inbox.next(is_heard)
        assert not any(content(m).interrupted for m in inbox.since(t0))


async def test_scripted_tool_call_round_trip() -> None:
    script = Script(
        [
            Step(
                on="text",
                say="Let me check.",
                tool_call=ToolCallSpec("lookup_order", {"order_id": "A17"}),
                then_say="Your order shipped.",
            )
        ]
    )
    async with fast_sim(script=script) as sim, live(sim, config(resume=True)) as (session, inbox):
        await say_text(session, "where is my order?")
        call = only_call(await inbox.next(lambda m: m.tool_call))
        assert call.name == "lookup_order"
        assert call.args == {"order_id": "A17"}
        assert call.id is not None
        assert call.id.startswith("function-call-")
        assert transcript([m for _, m in inbox.messages]) == "Let me check."
        await session.send_tool_response(
            function_responses=[
                types.FunctionResponse(id=call.id, name=call.name, response={"status": "shipped"})
            ]
        )
        await inbox.next(turn_complete)
        assert transcript([m for _, m in inbox.messages]) == "Let me check.Your order shipped."
        record = sim.connections[0]
        assert record.tool_responses == [
            {"id": call.id, "name": "lookup_order", "response": {"status": "shipped"}}
        ]
        kinds = [e.kind for e in sim.sessions[1].history]
        assert kinds == ["text", "model", "tool_call", "tool_response"]


async def test_tool_call_cancelled_by_barge_in_and_by_timeout() -> None:
    script = Script([Step(on="text", say="Checking.", tool_call=ToolCallSpec("slow", {}))] * 2)
    async with fast_sim(script=script, tool_timeout_s=0.2) as sim, live(sim) as (session, inbox):
        await say_text(session)
        call = only_call(await inbox.next(lambda m: m.tool_call))
        await send_audio(session, speech(0.12))
        await inbox.next(lambda m: content(m).interrupted)
        cancel = await inbox.next(lambda m: m.tool_call_cancellation)
        assert cancelled_ids(cancel) == [call.id]
        await send_audio(session, silence(0.45))
        await inbox.next(turn_complete)
        await inbox.next(turn_complete)
        await say_text(session)
        second = only_call(await inbox.next(lambda m: m.tool_call))
        cancel = await inbox.next(lambda m: m.tool_call_cancellation)
        assert cancelled_ids(cancel) == [second.id]
        await inbox.next(turn_complete)


async def test_default_handoff_then_resume_as_the_next_agent() -> None:
    triage = config(instruction="Role: Triage", tools=[HANDOFF], resume=True)
    async with fast_sim() as sim:
        async with live(sim, triage) as (session, inbox):
            await send_audio(session, speech(0.3) + silence(0.45))
            await inbox.next(turn_complete)
            assert transcript([m for _, m in inbox.messages]).startswith("I understand.")
            await send_audio(session, speech(0.5) + silence(0.45))
            call = only_call(await inbox.next(lambda m: m.tool_call))
            assert call.name == "handoff_conversation"
            assert call.args is not None
            assert call.args["target"] == "billing_agent"
            assert call.args["summary"] == (
                "Caller said: caller utterance 1 (0.3 s); caller utterance 2 (0.5 s)"
            )
            assert call.args["reason"]
            await session.send_tool_response(
                function_responses=[types.FunctionResponse(id=call.id, name=call.name, response={})]
            )
            await inbox.next(turn_complete)
            handle = new_handle(await inbox.next(new_handle))
        assert handle is not None
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        billing = config(
            voice="Charon", instruction="Role: Billing agent", tools=[HANDOFF], resume=handle
        )
        async with live(sim, billing) as (session, inbox):
            await send_audio(session, speech(0.3) + silence(0.45))
            await inbox.next(turn_complete)
            assert transcript([m for _, m in inbox.messages]) == (
                "I understand. Let me help you with that."
            )
        assert sim.connections[1].resumed
        assert sim.connections[1].session_id == 1
        assert sim.sessions[1].caller_utterances == 3


# --- resumption --------------------------------------------------------------------------------


async def test_resume_reattaches_with_new_voice_and_instruction() -> None:
    async with fast_sim() as sim:
        async with live(sim, config(instruction="Role: Triage", resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        cfg = config(voice="Kore", instruction="Role: Billing agent", resume=handle)
        async with live(sim, cfg) as (session, inbox):
            turn, second_handle = await text_turn(session, inbox)
        assert transcript(turn) == "Hello, this is the Billing agent. How can I help you today?"
        assert analysis.dominant_frequency(audio(turn), 24000) == pytest.approx(
            voice_pitch_hz("Kore"), abs=2
        )
        first, second = sim.connections
        assert second.resumed
        assert second.handle_requested == handle
        assert first.session_id == second.session_id == 1
        session_record = sim.sessions[1]
        assert session_record.connection_indexes == [0, 1]
        assert session_record.handles == [handle, second_handle]
        assert [(e.kind, e.connection_index, e.voice) for e in session_record.history] == [
            ("text", 0, "Puck"),
            ("model", 0, "Puck"),
            ("text", 1, "Kore"),
            ("model", 1, "Kore"),
        ]


async def test_unknown_or_forgotten_handle_is_1008() -> None:
    async with fast_sim() as sim:
        with pytest.raises(errors.APIError) as caught:
            async with live(sim, config(resume="no-such-handle")):
                pass
        assert caught.value.code == 1008
        assert caught.value.details == "unknown session resumption handle"
        async with live(sim, config(resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
        sim.forget_handles()
        with pytest.raises(errors.APIError) as caught:
            async with live(sim, config(resume=handle)):
                pass
        assert caught.value.code == 1008


async def test_resume_while_the_old_connection_is_open() -> None:
    async with fast_sim() as sim, live(sim, config(resume=True)) as (session, inbox):
        _, handle = await text_turn(session, inbox)
        with pytest.raises(errors.APIError) as caught:
            async with live(sim, config(resume=handle)):
                pass
        assert caught.value.code == 1011
        sim.reject_resume_while_open = False
        async with live(sim, config(resume=handle)):
            await sim.wait_for_connections(3)
            await say_text(session, "still here")  # on the old connection the session left
            await inbox.next(turn_complete)
        assert sim.connections[2].resumed
        record = sim.sessions[1]
        assert record.texts("text") == ["hi"]  # the resumed session never learns of it
        assert record.texts("text", include_lost=True) == ["hi", "still here"]


async def test_model_cannot_change_on_resume() -> None:
    async with fast_sim() as sim:
        async with live(sim, config(resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        with pytest.raises(errors.APIError) as caught:
            async with sdk(sim).aio.live.connect(model="other-model", config=config(resume=handle)):
                pass
        assert caught.value.code == 1007


# --- resumption restores the state as of the handle --------------------------------------------


async def test_a_text_turn_after_the_newest_handle_is_lost_on_resume() -> None:
    script = Script(
        [
            Step(on="text", say="Hello.", seconds=0.05),
            Step(on="text", say="Let me write that down.", seconds=20.0),  # 0.4 s at 50x
        ]
    )
    async with fast_sim(script=script) as sim:
        async with live(sim, config(resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
            await asyncio.sleep(0.1)  # "Hello." has played; the next text is no barge-in
            await say_text(session, "my account number is 42")
            await inbox.next(lambda m: content(m).output_transcription)  # answering ...
        # ... when the socket goes: no handle was issued after the text.
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        first = sim.connections[0]
        assert first.handles_issued == [(handle, 1)]  # setup = 0, the first text = 1
        assert first.client_messages == [(0, "setup"), (1, "client_content"), (2, "client_content")]
        assert not any("last consumed" in s for s in first.sent_summaries())  # not transparent
        async with live(sim, config(resume=handle)) as (session, inbox):
            turn, _ = await text_turn(session, inbox)
        resumed = sim.connections[1]
        assert resumed.resumed_from == handle
        assert resumed.rolled_back == 2  # the text and the half-said answer to it
        record = sim.sessions[1]
        assert record.texts("text") == ["hi", "hi"]
        assert record.texts("text", include_lost=True) == ["hi", "my account number is 42", "hi"]
        assert [(e.kind, e.connection_index) for e in record.lost] == [("text", 0), ("model", 0)]
        assert all("my account number" not in text for text in record.texts())
        # The resumed model's prompt counts only what it knows (and its instruction and tools).
        (usage,) = [m.usage_metadata for m in turn if m.usage_metadata]
        assert usage.prompt_token_count == prompt_text_tokens(
            resumed.system_instruction, resumed.function_declarations, record.texts()
        )


async def test_caller_audio_after_the_newest_handle_is_lost_on_resume() -> None:
    script = Script(
        [
            Step(on="text", say="Hello.", seconds=0.05),
            Step(on="caller", say="Hmm, let me see.", seconds=20.0),
        ]
    )
    async with fast_sim(script=script) as sim:
        async with live(sim, config(resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
            await asyncio.sleep(0.1)
            await send_audio(session, speech(0.6) + silence(0.45))
            assert heard(await inbox.next(is_heard)) == "caller utterance 1 (0.6 s)"
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        assert len(sim.connections[0].handles_issued) == 1
        async with live(sim, config(resume=handle)) as (session, inbox):
            await send_audio(session, speech(2.4) + silence(0.45))
            # The model never heard the first utterance: this is its first.
            assert heard(await inbox.next(is_heard)) == "caller utterance 1 (2.4 s)"
            await inbox.next(turn_complete)
        record = sim.sessions[1]
        assert record.utterances_heard(1) == [pytest.approx(2.4, abs=0.03)]
        assert record.utterances_heard() == [pytest.approx(2.4, abs=0.03)]
        assert record.utterances_heard(include_lost=True) == [
            pytest.approx(0.6, abs=0.03),
            pytest.approx(2.4, abs=0.03),
        ]
        assert record.caller_utterances == 1
        assert sim.connections[1].rolled_back == 2  # the utterance and the answer begun


def _audio_message(pcm: bytes) -> str:
    blob = {"data": base64.b64encode(pcm).decode(), "mimeType": "audio/pcm;rate=16000"}
    return json.dumps({"realtimeInput": {"audio": blob}})


async def _next_update(ws: Any) -> types.LiveServerMessage:
    """The next ``sessionResumptionUpdate`` with a handle, parsed as the SDK parses it."""
    async with asyncio.timeout(WAIT_S):
        async for frame in ws:
            message = types.LiveServerMessage._from_response(response=json.loads(frame), kwargs={})
            if new_handle(message):
                return message
    raise AssertionError("connection closed")


def _consumed(message: types.LiveServerMessage) -> int | None:
    assert message.session_resumption_update is not None
    return message.session_resumption_update.last_consumed_client_message_index


async def test_transparent_handles_carry_the_last_consumed_client_message_index() -> None:
    """Vertex AI's transparent resumption, with a raw client (the SDK refuses ``transparent``
    for the Developer API). Replaying what was sent after the index loses nothing."""
    loud = [_audio_message(tone_pcm16(1000.0, 0.02, -20.0, 16000)) for _ in range(10)]
    quiet = [_audio_message(silence(0.02)) for _ in range(25)]
    while_talking = json.dumps({"realtimeInput": {"text": "while talking"}})

    def setup(handle: str | None = None) -> str:
        resumption: dict[str, Any] = {"transparent": True}
        if handle:
            resumption["handle"] = handle
        generation = {"responseModalities": ["TEXT"]}  # no playback: no barge-ins
        return json.dumps(
            {
                "setup": {
                    "model": MODEL,
                    "sessionResumption": resumption,
                    "generationConfig": generation,
                }
            }
        )

    async with fast_sim() as sim:
        cfg = config(resume=True)
        assert cfg.session_resumption is not None
        cfg.session_resumption.transparent = True
        with pytest.raises(ValueError, match="transparent"):
            await sdk(sim).aio.live.connect(model=MODEL, config=cfg).__aenter__()
        uri = sim.base_url.replace("https", "wss") + LIVE_PATH + "?key=k"
        ctx = sim.tls.client_context()
        async with ws_connect(uri, ssl=ctx) as ws:
            await ws.send(setup())  # message 0
            await ws.recv()
            await ws.send(json.dumps({"realtimeInput": {"text": "hi"}}))  # 1
            assert _consumed(await _next_update(ws)) == 1
            for message in loud:  # 2-11: an utterance starts ...
                await ws.send(message)
            await ws.send(while_talking)  # 12: ... and a text arrives while it is open
            update = await _next_update(ws)  # after the answer to the text
            assert _consumed(update) == 1
            handle = new_handle(update)
            assert handle is not None
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        first = sim.connections[0]
        assert first.transparent
        assert first.client_messages == [
            (0, "setup"),
            (1, "text"),
            *[(index, "audio") for index in range(2, 12)],
            (12, "text"),
        ]
        assert [consumed for _, consumed in first.handles_issued] == [1, 1]
        assert any(s.endswith("(last consumed 1)") for s in first.sent_summaries())

        # A transparent client resumes and replays what it sent after message 1.
        async with ws_connect(uri, ssl=ctx) as ws:
            await ws.send(setup(handle))
            await ws.recv()
            for message in [*loud, while_talking, *quiet]:
                await ws.send(message)
            while (consumed := _consumed(await _next_update(ws))) is not None and consumed < 31:
                pass
            assert consumed is not None and 31 <= consumed <= 36  # 400 ms of silence ended it
        session = sim.sessions[1]
        assert sim.connections[1].resumed_from == handle
        assert session.texts("text") == ["hi", "while talking"]  # once, not twice
        assert session.utterances_heard() == [pytest.approx(0.2)]
        assert session.utterances_heard(1) == [pytest.approx(0.2)]
        assert [(e.kind, e.text) for e in session.lost][:1] == [("text", "while talking")]


async def test_a_tool_response_on_a_new_connection_does_not_answer_the_old_call() -> None:
    script = Script(
        [
            Step(on="text", say="Hello.", seconds=0.05),
            Step(
                on="text",
                say="Let me check.",
                seconds=0.05,
                tool_call=ToolCallSpec("lookup_order", {"order_id": "A17"}),
                then_say="Your order shipped.",
            ),
        ]
    )
    async with fast_sim(script=script) as sim:
        async with live(sim, config(resume=True)) as (session, inbox):
            _, handle = await text_turn(session, inbox)
            await asyncio.sleep(0.1)
            await say_text(session, "where is my order?")
            call = only_call(await inbox.next(lambda m: m.tool_call))
        await sim.wait_for(lambda: not sim.connections[0].is_open)
        async with live(sim, config(resume=handle)) as (session, inbox):
            # A client bug: answering the old connection's call on the new connection.
            response = types.FunctionResponse(id=call.id, name=call.name, response={"ok": True})
            await session.send_tool_response(function_responses=[response])
            resumed = sim.connections[1]
            await sim.wait_for(lambda: resumed.stray_tool_responses)
            await asyncio.sleep(0.1)
            assert transcript([m for _, m in inbox.messages]) == ""  # no "Your order shipped."
        assert resumed.stray_tool_responses == [
            {"id": call.id, "name": "lookup_order", "response": {"ok": True}}
        ]
        record = sim.sessions[1]
        assert [e.kind for e in record.known] == ["text", "model"]
        assert [e.kind for e in record.lost] == ["text", "model", "tool_call"]
        assert "tool_response" not in [e.kind for e in record.history]


# --- fault hooks -------------------------------------------------------------------------------


async def test_go_away_then_deadline_close() -> None:
    async with fast_sim() as sim, live(sim) as (_, inbox):
        await sim.wait_for_connections(1)
        assert await sim.go_away("5s") == 1
        message = await inbox.next(lambda m: m.go_away)
        assert time_left(message) == "5s"
        await sim.go_away(0.5, close_after=0.05)
        error = await inbox.closed()
        assert error.code == 1011
        record = sim.connections[0]
        await sim.wait_for(lambda: not record.is_open)
        assert record.closed_by == "server"
        assert record.close_code == 1011


@pytest.mark.parametrize("code", [1011, 1008, 4003])
async def test_injected_close_code_surfaces_as_api_error(code: int) -> None:
    async with fast_sim() as sim, live(sim) as (_, inbox):
        await sim.wait_for_connections(1)
        assert await sim.close(code, "simulated outage") == 1
        error = await inbox.closed()
        assert error.code == code
        assert error.details == "simulated outage"


async def test_inject_any_known_message() -> None:
    async with fast_sim() as sim, live(sim) as (_, inbox):
        await sim.wait_for_connections(1)
        await sim.inject({"toolCallCancellation": {"ids": ["x"]}})
        message = await inbox.next(lambda m: m.tool_call_cancellation)
        assert cancelled_ids(message) == ["x"]
        with pytest.raises(ValueError, match="top level"):
            await sim.inject({"error": {"message": "crashes the SDK"}})


async def test_fail_next_connects() -> None:
    async with fast_sim() as sim:
        sim.fail_next_connects(1, code=1013, reason="try later")
        with pytest.raises(errors.APIError) as caught:
            async with live(sim):
                pass
        assert caught.value.code == 1013
        async with live(sim) as (session, inbox):
            await say_text(session)
            await inbox.next(turn_complete)
        assert sim.connections[0].injected_failure
        assert not sim.connections[1].injected_failure


async def test_http_control_routes() -> None:
    async with fast_sim() as sim, live(sim) as (session, inbox):
        await send_audio(session, silence(0.1))
        async with httpx.AsyncClient(
            base_url=sim.base_url, verify=sim.tls.client_context()
        ) as http:
            health = await http.get("/_sim/health")
            assert health.json() == {"ok": True}
            listing = await http.get("/_sim/connections")
            assert listing.headers["content-type"] == "application/json"
            assert "test-key" not in listing.text
            (summary,) = listing.json()["connections"]
            assert summary["api_version"] == "v1beta"
            assert summary["audio_in_bytes"] == 3200
            goaway = await http.post("/_sim/goaway", params={"time_left": "7s"})
            assert goaway.json() == {"ok": True, "affected": 1}
            assert time_left(await inbox.next(lambda m: m.go_away)) == "7s"
            injected = {"serverContent": {"outputTranscription": {"text": "injected"}}}
            await http.post("/_sim/inject", params={"message": json.dumps(injected)})
            await inbox.next(lambda m: content(m).output_transcription)
            assert (await http.get("/_sim/close")).status_code == 405
            assert (await http.post("/_sim/close", params={"code": "x"})).status_code == 400
            assert (await http.post("/_sim/close", params={"code": "1005"})).status_code == 400
            assert (await http.get("/_sim/nope")).status_code == 404
            closed = await http.post("/_sim/close", params={"code": "1011", "reason": "http"})
            assert closed.json()["affected"] == 1
            error = await inbox.closed()
            assert (error.code, error.details) == (1011, "http")
            sessions = (await http.get("/_sim/sessions")).json()["sessions"]
            assert sessions[0]["id"] == 1


async def test_stop_leaves_no_tasks() -> None:
    script = Script([Step(on="text", say="Checking.", tool_call=ToolCallSpec("slow", {}))])
    sim = fast_sim(script=script)
    await sim.start()
    async with live(sim) as (session, inbox):
        await say_text(session)
        await inbox.next(lambda m: m.tool_call)  # a turn task is now waiting for the response
        await sim.go_away("30s", close_after=30)  # and a timer task is pending
        await sim.stop()
        error = await inbox.closed()
        assert error.code == 1001
    assert sim.connections[0].closed_by == "server"
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []
    await sim.stop()  # idempotent
