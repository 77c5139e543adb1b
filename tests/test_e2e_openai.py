"""Calls on OpenAI Realtime through the real gateway: the real openai SDK against the Realtime
simulator over TLS, the real caller simulators over websockets.

Everything the Gemini end-to-end tests show, on the second provider: audio both ways (μ-law
untouched, byte for byte), barge-in with the interrupted answer truncated at what the caller
heard, handoffs in place and with a new voice, tool calls, dropped connections recovered,
permanent errors ended politely, and the providers mixed in one call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import numpy as np

from callsim.callers.audio import Silence, Tone
from callsim.callers.result import CallResult
from callsim.live.script import Step, ToolCallSpec
from callsim.live.voices import voice_pitch_hz
from callsim.realtime.records import RealtimeConnectionRecord
from gateway.audio.analysis import dominant_frequency, rms_dbfs
from tests.harness import ADMIN_TOKEN, Carrier, Harness, agents, running
from tests.servers import until
from tests.webcaller import web_call

GREETING = agents(agent_triage={"greeting": "Greet the caller and ask how you can help."})


def _sent_audio(result: CallResult) -> bytes:
    """Every media payload the caller sent, in order."""
    return b"".join(
        base64.b64decode(m["media"]["payload"]) for _, m in result.sent if m.get("event") == "media"
    )


def _received_audio(result: CallResult) -> bytes:
    return b"".join(
        base64.b64decode(m["media"]["payload"])
        for _, m in result.received
        if m.get("event") == "media"
    )


def _spoken(conn: RealtimeConnectionRecord) -> bytes:
    """The assistant audio the simulator sent on a connection, in order."""
    return b"".join(bytes(i.audio) for i in conn.items if i.role == "assistant" and i.audio)


def _user_texts(conn: RealtimeConnectionRecord) -> list[str]:
    return [i.text or "" for i in conn.items if i.source == "client" and i.role == "user"]


_LOUD = round(32768 * 10 ** (-40 / 20))  # a sample above -40 dBFS is sound


def _pitch_after(result: CallResult, start_s: float, seconds: float = 0.3) -> float:
    """The pitch of the first stretch heard after ``start_s`` that is sound throughout.

    The window starts at the sound's onset and must stay loud in every 20 ms of it: a window
    that only catches a sound's edge (its first milliseconds, or the last ones before a
    barge-in's cut) reads as DC once the spectrum's window tapers that edge away.
    """
    pcm = np.frombuffer(result.heard_pcm(), dtype="<i2")
    rate = result.heard_rate
    size, block = int(seconds * rate), rate // 50
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > _LOUD)
    at = int(start_s * rate)
    while (next_loud := int(np.searchsorted(loud, at))) < loud.size:
        onset = int(loud[next_loud])
        chunk = pcm[onset : onset + size].tobytes()
        blocks = [chunk[i : i + 2 * block] for i in range(0, len(chunk), 2 * block)]
        if len(chunk) == 2 * size and all(rms_dbfs(b) > -40 for b in blocks):
            return dominant_frequency(chunk, rate)
        at = onset + block
    raise AssertionError(f"no {seconds} s of sound heard after {start_s} s")


async def test_mulaw_passes_through_untouched_both_ways() -> None:
    steps = [
        Step(on="text", say="Welcome.", seconds=0.6),
        Step(on="caller", say="Sure.", seconds=0.6),
    ]
    async with running(steps=steps, graph=GREETING, provider="openai") as h:
        # The caller speaks well after the greeting has played, even on a loaded machine
        # (a slow connect once pushed it into the tone: a barge-in, not a passthrough).
        result = await h.call([Silence(3.0), Tone(300, 0.6, -15), Silence(2.5)], linger_s=0.3)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    assert conn.input_format == {"type": "audio/pcmu"}
    assert conn.output_format == {"type": "audio/pcmu"}
    assert conn.model == "gpt-realtime-2.1"
    # Every byte the caller sent reached the model as it was, and the other way round.
    assert bytes(conn.audio_in) == _sent_audio(result)
    assert len(conn.audio_in) > 8000 * 4
    spoken = _spoken(conn)
    assert len(spoken) >= 2 * 8000 * 0.6
    assert _received_audio(result) == spoken
    assert conn.voice == "alloy"  # the Gemini voice Aoede, moved to OpenAI by the harness


async def test_the_session_is_the_agent_and_transcripts_reach_the_record() -> None:
    steps = [Step(on="caller", hear="I need help.", say="Happy to help.", seconds=0.5)]
    async with running(steps=steps, provider="openai") as h:
        await h.call([Silence(0.5), Tone(300, 0.6, -15), Silence(2.0)], linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    agent = h.graph.agent("agent-triage")
    assert conn.instructions == agent.system_instruction()
    assert conn.tool_names == ["handoff_conversation"]
    assert (conn.turn_detection or {})["type"] == "server_vad"
    assert conn.transcription is not None
    lines = [(e["speaker"], e["text"]) for e in h.named("transcript")]
    assert ("caller", "I need help.") in lines
    assert ("agent", "Happy to help.") in lines
    (usage, *_) = h.named("live.usage")
    assert usage["total_tokens"] > 0


async def test_barge_in_clears_and_truncates_at_what_the_caller_heard() -> None:
    steps = [Step(on="text", say="a long answer", seconds=6.0)]
    async with running(steps=steps, graph=GREETING, provider="openai") as h:
        result = await h.call([Silence(2.0), Tone(300, 0.8, -15), Silence(1.2)], linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    assert result.clear_times, "the gateway never sent clear"
    clear_at = result.clear_times[0]
    ((item_id, content_index, audio_end_ms),) = conn.truncations
    item = conn.item(item_id)
    assert item is not None and item.role == "assistant"
    assert content_index == 0
    # What the caller heard of the answer: from its first audio to the clear.
    assert result.first_media_time is not None
    heard_ms = (clear_at - result.first_media_time) * 1000
    assert abs(audio_end_ms - heard_ms) < 120, (audio_end_ms, heard_ms)
    assert audio_end_ms < len(item.audio) / 8  # less than the simulator had sent
    # The late delta the service sends after speech_started never reached the caller.
    heard = result.heard_pcm()
    start = int(result.call_time(clear_at) * 8000 + 8 * 20) * 2
    assert rms_dbfs(heard[start : start + 8000]) < -60
    (event,) = h.named("agent.interrupted")
    assert event["unheard_ms"] > 1000


async def test_a_caller_who_speaks_when_nothing_plays_is_not_a_barge_in() -> None:
    steps = [Step(on="caller", say="Sure.", seconds=0.4)]
    async with running(steps=steps, provider="openai") as h:
        result = await h.call([Silence(0.8), Tone(300, 0.6, -15), Silence(1.5)], linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    assert conn.speech_started_at  # the service said the caller began to speak
    assert result.clear_times == []
    assert h.named("agent.interrupted") == []
    assert conn.truncations == []


def _handoff_steps(second_role: str) -> list[Step]:
    return [
        Step(
            on="caller",
            when="Role: Triage",
            hear="I want advice.",
            say="Let me transfer you.",
            seconds=0.6,
            tool_call=ToolCallSpec(
                "handoff_conversation",
                {"target": "agent-advisor", "reason": "advice", "summary": "wants advice"},
            ),
        ),
        Step(on="text", when=f"Role: {second_role}", say="Advisor here.", seconds=0.8),
    ]


@contextlib.asynccontextmanager
async def _handoff_call(advisor_voice: str) -> AsyncIterator[tuple[Harness, CallResult]]:
    """A call on OpenAI in which the triage agent (voice coral) hands off to the advisor."""
    graph = agents(
        provider="openai",
        agent_triage={"greeting": "", "voice": "coral"},
        agent_advisor={"voice": advisor_voice},
    )
    async with running(steps=_handoff_steps("Portfolio advisor"), graph=graph) as h:
        result = await h.call([Silence(0.5), Tone(300, 0.6, -15), Silence(3.5)], linger_s=0.2)
        assert h.realtime is not None
        yield h, result


async def test_a_handoff_to_the_same_voice_updates_the_session_in_place() -> None:
    async with _handoff_call("coral") as (h, result):
        assert h.realtime is not None
        (conn,) = h.realtime.connections  # no new connection
    first, second = conn.session_updates[0], conn.session_updates[-1]
    assert "Role: Triage receptionist" in first["instructions"]
    assert "Role: Portfolio advisor" in second["instructions"]
    assert "voice" not in second.get("audio", {}).get("output", {})  # it has spoken
    assert [t["name"] for t in second["tools"]] == ["handoff_conversation"]  # back to triage
    # The old agent's answer to its transfer asks for no response of its own; the takeover
    # note does, and the advisor speaks.
    outputs = [i for i in conn.items if i.type == "function_call_output"]
    assert len(outputs) == 1 and json.loads(outputs[0].output or "{}")["result"] == "transferred"
    assert any(t.startswith("[Call transfer]") for t in _user_texts(conn))
    assert [r.trigger for r in conn.responses] == ["vad", "client"]
    (handoff,) = h.named("handoff.completed")
    assert handoff["resumed"] is True
    assert handoff["reconnect_ms"] < 50
    lines = [(e["speaker"], e["text"]) for e in h.named("transcript")]
    assert ("agent", "Advisor here.") in lines
    assert result.violations == []


async def test_a_handoff_to_another_voice_opens_a_new_session_told_the_history() -> None:
    async with _handoff_call("sage") as (h, result):
        assert h.realtime is not None
        old, new = h.realtime.connections
    assert (old.voice, new.voice) == ("coral", "sage")
    assert old.closed_by == "client"
    assert "Role: Portfolio advisor" in new.instructions
    # The new session is told the conversation so far, then the takeover note.
    roles = [(i.role, i.text) for i in new.items if i.source == "client" and i.type == "message"]
    assert ("assistant", "Let me transfer you.") in roles
    assert roles[-1][0] == "user" and (roles[-1][1] or "").startswith("[Call transfer]")
    (handoff,) = h.named("handoff.completed")
    assert handoff["resumed"] is False
    # The caller hears the advisor in the new voice.
    heard_advisor = _pitch_after(result, result.call_time(new.opened_at) + 0.2)
    assert abs(heard_advisor - voice_pitch_hz("sage")) < 15


async def test_end_call_is_answered_and_ends_the_call_after_the_goodbye() -> None:
    steps = [
        Step(
            on="caller",
            say="Goodbye!",
            seconds=0.8,
            tool_call=ToolCallSpec("end_call", {"reason": "the caller is done"}),
        )
    ]
    graph = agents(agent_triage={"greeting": "", "tools": ["end_call"]})
    async with running(steps=steps, graph=graph, provider="openai", carrier_api=True) as h:
        result = await h.call([Silence(0.5), Tone(300, 0.6, -15), Silence(6.0)], linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "agent_ended"
    (output,) = [i for i in conn.items if i.type == "function_call_output"]
    assert "call will end" in json.loads(output.output or "{}")["result"]
    # The goodbye played out before the hang-up.
    assert result.unplayed_s < 0.1
    assert result.after_stream == ["Hangup"]


async def test_a_dropped_connection_is_reseeded_and_the_call_goes_on() -> None:
    steps = [
        Step(on="text", say="Welcome to the bank.", seconds=0.6),
        Step(on="text", say="As I was saying.", seconds=0.6),
    ]
    async with running(steps=steps, graph=GREETING, provider="openai") as h:
        call = asyncio.create_task(h.call([Silence(4.5)], linger_s=0.2))
        assert h.realtime is not None
        sim = h.realtime
        await sim.wait_for(lambda: sim.connections and _spoken(sim.connections[0]), timeout=5)
        await asyncio.sleep(0.8)
        await sim.close(1011, "internal error")
        result = await call
        _, second = sim.connections
    (reconnected,) = h.named("live.reconnected")
    assert reconnected["reason"] == "dropped"
    assert reconnected["resumed"] is False
    # The new session knows what was said and is asked to carry on.
    texts = [(i.role, i.text) for i in second.items if i.source == "client"]
    assert ("assistant", "Welcome to the bank.") in texts
    assert "interrupted" in (texts[-1][1] or "")
    assert len(second.audio_in) > 0  # the caller's audio goes on to the new session
    assert _received_audio(result).endswith(_spoken(second))
    assert result.violations == []


async def test_the_sessions_time_limit_moves_the_call_to_a_new_session() -> None:
    steps = [Step(on="text", say="Welcome.", seconds=0.4)] * 2
    async with running(steps=steps, graph=GREETING, provider="openai") as h:
        call = asyncio.create_task(h.call([Silence(3.0)], linger_s=0.2))
        assert h.realtime is not None
        sim = h.realtime
        await sim.wait_for(lambda: sim.connections and _spoken(sim.connections[0]), timeout=5)
        await sim.expire()
        await call
        assert len(sim.connections) == 2
    (reconnected,) = h.named("live.reconnected")
    assert reconnected["reason"] == "expired"


async def test_a_refused_key_ends_the_call_politely() -> None:
    async with running(provider="openai", realtime_options={}) as h:
        assert h.realtime is not None
        h.realtime.fail_next_connects(5, status=401)
        result = await h.call([Silence(1.0)], linger_s=0.2)
        assert h.realtime.connections == []
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "model_unavailable"
    assert result.after_stream and result.after_stream[0].startswith("Say:")
    assert len(h.realtime.refused) == 1  # permanent: not retried


async def test_a_rate_limited_connect_is_retried() -> None:
    async with running(graph=GREETING, provider="openai") as h:
        assert h.realtime is not None
        h.realtime.fail_next_connects(1, status=429)
        result = await h.call([Silence(1.5)], linger_s=0.2)
        assert len(h.realtime.connections) == 1
    assert [status for status, _ in h.realtime.refused] == [429]
    assert result.media_bytes_received > 0  # the greeting played


async def test_a_permanent_error_mid_call_ends_it_politely() -> None:
    async with running(graph=GREETING, provider="openai") as h:
        call = asyncio.create_task(h.call([Silence(3.0)], linger_s=0.2))
        assert h.realtime is not None
        sim = h.realtime
        await sim.wait_for(lambda: sim.connections and _spoken(sim.connections[0]), timeout=5)
        error = {"type": "insufficient_quota", "code": "insufficient_quota", "message": "quota"}
        await sim.inject({"type": "error", "error": error})
        result = await call
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "model_ended"
    assert any(step.startswith("Say:") for step in result.after_stream)


async def test_failed_responses_are_asked_for_again() -> None:
    steps = [Step(on="text", say="Welcome.", seconds=0.5)]
    async with running(steps=steps, graph=GREETING, provider="openai") as h:
        assert h.realtime is not None
        h.realtime.fail_next_responses(1)
        result = await h.call([Silence(3.0)], linger_s=0.2)
        (conn,) = h.realtime.connections
    assert [r.status for r in conn.responses][:2] == ["failed", "completed"]
    assert result.media_bytes_received > 0


async def test_keypad_entries_reach_the_model_as_a_user_message() -> None:
    keys = [(0.5, "4"), (0.7, "2"), (0.9, "#")]
    async with running(provider="openai") as h:
        await h.call([Silence(1.6)], dtmf=keys, linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    assert _user_texts(conn) == ["The caller pressed 4 2 # on the phone keypad."]
    assert [r.trigger for r in conn.responses] == ["client"]


async def test_a_wideband_call_meets_the_model_at_24k() -> None:
    steps = [Step(on="text", say="Welcome.", seconds=0.6)]
    g722 = Carrier("telnyx", "G722")
    async with running(steps=steps, graph=GREETING, provider="openai", carrier=g722) as h:
        result = await h.call([Silence(1.5)], linger_s=0.2)
        assert h.realtime is not None
        (conn,) = h.realtime.connections
    assert conn.input_format == conn.output_format == {"type": "audio/pcm", "rate": 24000}
    # Each G.722 byte is two samples at 16 kHz, three at 24 kHz (less the filter's delay).
    assert abs(len(conn.audio_in) - len(_sent_audio(result)) * 6) < 48 * 10
    hz = _pitch_after(result, 0.0)
    assert abs(hz - voice_pitch_hz(h.graph.agent("agent-triage").voice)) < 15


async def test_one_call_can_cross_from_gemini_to_openai() -> None:
    """An agent on another provider: the call moves to a fresh session there, told the
    history, and the bridge follows its audio formats."""
    graph = agents(
        agent_triage={"greeting": ""}, agent_advisor={"provider": "openai", "voice": "sage"}
    )
    async with running(steps=_handoff_steps("Portfolio advisor"), graph=graph) as h:
        result = await h.call([Silence(0.5), Tone(300, 0.6, -15), Silence(3.5)], linger_s=0.2)
        assert h.realtime is not None
        (live,) = h.sim.connections
        (realtime,) = h.realtime.connections
    assert live.closed_by == "client"
    assert realtime.input_format == {"type": "audio/pcmu"}
    # The caller's μ-law as it was sent, from the first frame after the move: none of it
    # transcoded for Gemini while the old session was still closing.
    assert len(realtime.audio_in) > 8000
    assert bytes(realtime.audio_in) in _sent_audio(result)
    # And every frame reached one model or the other (Gemini's PCM16 is 4 bytes a μ-law byte).
    assert len(live.audio_in) // 4 + len(realtime.audio_in) == len(_sent_audio(result))
    assert any(t.startswith("[Call transfer]") for t in _user_texts(realtime))
    heard = _pitch_after(result, result.call_time(realtime.opened_at) + 0.2)
    assert abs(heard - voice_pitch_hz("sage")) < 15
    (handoff,) = h.named("handoff.completed")
    assert handoff["to_agent"] == "agent-advisor"


async def test_a_browser_call_on_openai_hears_the_models_24k_audio_untouched() -> None:
    steps = [Step(on="text", say="Welcome.", seconds=0.6)]
    async with running(
        steps=steps, graph=GREETING, provider="openai", admin_api_token=ADMIN_TOKEN
    ) as h:
        assert h.realtime is not None
        sim = h.realtime
        async with web_call(h) as call:
            await until(lambda: sim.connections and len(call.received) >= 0.6 * 48000, 10)
            await call.speak(Silence(0.4).pcm(16000))
            await until(lambda: len(sim.connections[0].audio_in) >= 0.4 * 48000 - 480, 10)
        (conn,) = sim.connections
    spoken = _spoken(conn)
    assert bytes(call.received[: len(spoken)]) == spoken
    assert conn.input_format == {"type": "audio/pcm", "rate": 24000}


async def test_an_http_tool_is_called_and_its_answer_continues_the_turn() -> None:
    from callsim.tools import ToolServer
    from tests.test_e2e_tools import ASK, support_graph

    async with ToolServer() as tools:
        tools.respond("/orders/lookup", {"status": "shipped"})
        graph = support_graph(tools.url)
        async with running(steps=ASK, graph=graph, provider="openai") as h:
            await h.call([Silence(0.5), Tone(300, 0.6, -15), Silence(3.0)], linger_s=0.2)
            assert h.realtime is not None
            (conn,) = h.realtime.connections
        (request,) = tools.requests
    assert request.body == {"order_id": "A17"}
    (call,) = [i for i in conn.items if i.type == "function_call"]
    (output,) = [i for i in conn.items if i.type == "function_call_output"]
    assert output.call_id == call.call_id
    assert json.loads(output.output or "{}") == {"status": "shipped"}
    lines = [(e["speaker"], e["text"]) for e in h.named("transcript")]
    assert ("agent", "It has shipped.") in lines
    # The tool's parameters reached the model as written (JSON Schema, nothing dropped).
    tool = next(t for t in conn.session["tools"] if t["name"] == "lookup_order")
    assert tool["parameters"]["properties"]["order_id"]["description"]
