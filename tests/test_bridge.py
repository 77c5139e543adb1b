"""CallBridge in isolation: a fake carrier socket speaking real Twilio wire JSON through the real
codec, and a fake model session the test scripts with :mod:`gateway.model.events`. No sockets,
no network; the bridge, codec, playout and transcoders are the real ones.

Every test ends through :meth:`Call.ended`, which also checks the teardown: the bridge left no
task behind, closed the model session exactly once and closed the carrier socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.agents import BUSY, HANDOFF_TOOL, AgentGraph, Fallback, parse_agents
from gateway.audio import g711
from gateway.audio.transcode import PCMU_8K, downlink_for
from gateway.call.bridge import BridgeOptions, CallBridge
from gateway.call.hooks import CallHooks, Refusal
from gateway.carriers.base import StreamStarted
from gateway.carriers.twilio import TwilioCodec
from gateway.model.events import (
    AgentTranscript,
    AudioOut,
    CallerTranscript,
    GoAway,
    HandleUpdated,
    Interrupted,
    Reconnected,
    SessionEnded,
    ToolCall,
    ToolCallCancelled,
    TurnComplete,
)
from gateway.model.session import ModelAudio, ModelConnectError, SessionFactory
from gateway.model.switch import ProviderSwitch
from tests.fakes import WAIT_S, FakeCarrierSocket, FakeModelSession, RecordingObserver

STREAM_SID = "MZ" + "a" * 32
CALL_SID = "CA" + "b" * 32

AGENTS_YAML = """
model: gemini-2.5-flash-native-audio-preview-12-2025
agents:
  - id: agent-triage
    role: Triage receptionist
    system_prompt: Ask what the caller needs.
    voice: Aoede
    fallback: {say: "Sorry, triage cannot continue."}
  - id: agent-advisor
    role: Portfolio advisor
    system_prompt: Give concise advice.
    voice: Charon
pipeline:
  - {phase: triage, agent_id: agent-triage, next: advising}
  - {phase: advising, agent_id: agent-advisor, next: null}
"""
GRAPH = parse_agents(AGENTS_YAML)

#: 20 ms of caller audio as Twilio sends it (μ-law, 8 kHz), and as Gemini takes it (PCM16, 16 kHz).
MULAW_FRAME_BYTES = 160
PCM16K_FRAME_BYTES = 640


# ---------------------------------------------------------------------- Twilio wire messages


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start() -> str:
    return json.dumps({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "c" * 32,
            "streamSid": STREAM_SID,
            "callSid": CALL_SID,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"from": "+15550001111"},
        },
        "streamSid": STREAM_SID,
    })  # fmt: skip


def media(payload: bytes = b"\xff" * MULAW_FRAME_BYTES, seq: int = 2) -> str:
    return json.dumps({
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {"track": "inbound", "chunk": str(seq - 1), "timestamp": str(20 * seq),
                  "payload": base64.b64encode(payload).decode()},
        "streamSid": STREAM_SID,
    })  # fmt: skip


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": name}})


def dtmf(digit: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"digit": digit}})


def stop() -> str:
    return json.dumps({"event": "stop", "streamSid": STREAM_SID, "stop": {"callSid": CALL_SID}})


# ---------------------------------------------------------------------- agent audio


def tone(ms: int, hz: float = 440.0) -> bytes:
    """Agent speech stand-in: a sine, PCM16 at 24 kHz (what Gemini sends)."""
    n = 24 * ms
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / 24000))) for i in range(n)
    )


def silence(ms: int) -> bytes:
    return b"\0" * (48 * ms)


def media_frames(socket: FakeCarrierSocket) -> list[bytes]:
    """The μ-law frames the carrier was sent, in order (a media message may carry several)."""
    frames = []
    for message in socket.events("media"):
        payload = base64.b64decode(message["media"]["payload"])
        frames += [
            payload[i : i + MULAW_FRAME_BYTES] for i in range(0, len(payload), MULAW_FRAME_BYTES)
        ]
    return frames


def is_silent(frame: bytes) -> bool:
    pcm = g711.ulaw_decode(frame)
    return max(abs(int(s)) for s in struct.unpack(f"<{len(pcm) // 2}h", pcm)) < 64


# ---------------------------------------------------------------------- one call


@dataclass
class Call:
    """One bridged call and everything its peers and hooks saw."""

    socket: FakeCarrierSocket
    session: FakeModelSession
    bridge: CallBridge
    task: asyncio.Task[None]
    tasks_before: set[asyncio.Task[Any]]
    observed: RecordingObserver
    hang_ups: list[str] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)

    def names(self) -> list[str]:
        return self.observed.names()

    def event(self, name: str) -> dict[str, Any]:
        return self.observed.first(name)

    async def connected(self) -> None:
        """Wait until the model session is open and the call's tasks run."""
        await self.session.until(lambda: self.session.opened)
        await asyncio.sleep(0)

    async def ended(self, *, session_created: bool = True) -> str:
        """Wait for ``run()`` to return; check the teardown; return the end reason."""
        async with asyncio.timeout(WAIT_S):
            await self.task
        leftover = asyncio.all_tasks() - self.tasks_before - {asyncio.current_task()}
        assert not leftover, leftover
        assert self.session.close_calls == (1 if session_created else 0)
        assert self.socket.closes, "the carrier socket was never closed"
        assert self.names()[-1] == "call.ended"
        assert self.event("call.ended")["reason"] == self.bridge.end_reason
        return self.bridge.end_reason


def begin(
    *,
    graph: AgentGraph = GRAPH,
    session: FakeModelSession | None = None,
    admit: Refusal | None = None,
    fallback_handles: bool = False,
    start_call: bool = True,
    hooks: dict[str, Any] | None = None,
    tool_runner: Any = None,
    new_live_session: SessionFactory | None = None,
    **options: Any,
) -> Call:
    """Run a bridge over fakes; by default the carrier has already sent connected + start.
    ``new_live_session``: the call's sessions come from it (``session`` is then the one the
    teardown checks), not from ``session`` alone."""
    socket = FakeCarrierSocket()
    session = session or FakeModelSession()
    tasks_before = asyncio.all_tasks()
    hang_ups: list[str] = []
    fallbacks: list[Fallback] = []

    async def hang_up(call_id: str) -> None:
        hang_ups.append(call_id)

    async def give_fallback(_: StreamStarted, chosen: Fallback) -> bool:
        fallbacks.append(chosen)
        return fallback_handles

    observed = RecordingObserver()
    bridge = CallBridge(
        socket,
        TwilioCodec(),
        graph=graph,
        new_live_session=new_live_session or session.factory,
        options=BridgeOptions(**{"playout_lead_ms": 40.0, **options}),
        observers=(observed,),
        hooks=CallHooks(
            admit=lambda _: admit, hang_up=hang_up, fallback=give_fallback, **(hooks or {})
        ),
        tool_runner=tool_runner,
    )
    if start_call:
        socket.feed(connected(), start())
    task = asyncio.create_task(bridge.run())
    return Call(socket, session, bridge, task, tasks_before, observed, hang_ups, fallbacks)


# ---------------------------------------------------------------------- audio


async def test_caller_audio_goes_up_as_pcm16_at_16khz() -> None:
    call = begin()
    await call.connected()
    call.socket.feed(*(media(seq=2 + i) for i in range(5)))
    await call.session.until(lambda: len(call.session.audio_sent) == 5)
    assert [len(chunk) for chunk in call.session.audio_sent] == [PCM16K_FRAME_BYTES] * 5
    assert call.session.opened[0].agent.id == "agent-triage"
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["frames_in"] == 5


async def _caller_loop_waiting(call: Call) -> None:
    await call.session.until(lambda: call.bridge._caller_waiting)


async def test_caller_audio_goes_by_the_media_lane_while_the_caller_loop_waits() -> None:
    call = begin()
    await call.connected()
    frames = [bytes([0x80 + i]) * MULAW_FRAME_BYTES for i in range(5)]
    for i, payload in enumerate(frames):
        await _caller_loop_waiting(call)
        call.socket.feed(media(payload, seq=2 + i))
    assert call.socket.laned == 5  # taken as the socket read them: no queue, no task switch
    assert call.session.audio_sent_now == 5
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["frames_in"] == 5
    assert call.socket.lane is None  # withdrawn at the end
    slow = FakeModelSession()
    slow.writable = False  # the same frames through the caller loop: the same audio, in order
    queued = begin(session=slow)
    await queued.connected()
    queued.socket.feed(*(media(payload, seq=2 + i) for i, payload in enumerate(frames)))
    await queued.session.until(lambda: len(queued.session.audio_sent) == 5)
    assert queued.socket.laned == 0
    assert call.session.audio_sent == queued.session.audio_sent
    queued.socket.feed(stop())
    assert await queued.ended() == "caller_hung_up"


async def test_the_media_lane_takes_nothing_out_of_turn() -> None:
    """A message queued ahead (a mark here) makes every message after it wait its turn."""
    call = begin()
    await call.connected()
    await _caller_loop_waiting(call)
    call.socket.feed(media(seq=2), mark("m1"), media(seq=3), media(seq=4))
    await call.session.until(lambda: len(call.session.audio_sent) == 3)
    assert call.socket.laned == 1  # only the first: the mark was queued, and so what followed
    assert call.session.audio_sent_now == 1
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_the_media_lane_declines_while_the_model_cannot_take_audio_at_once() -> None:
    session = FakeModelSession()
    session.writable = False  # reconnecting, paused by flow control, mid-handoff
    call = begin(session=session)
    await call.connected()
    for i in range(3):
        await _caller_loop_waiting(call)
        call.socket.feed(media(seq=2 + i))
        await call.session.until(lambda i=i: len(call.session.audio_sent) == i + 1)
    assert call.socket.laned == 0
    assert session.audio_sent_now == 0  # every frame went the caller loop's way
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["frames_in"] == 3


async def test_a_malformed_message_is_left_to_the_caller_loop() -> None:
    call = begin()
    await call.connected()
    await _caller_loop_waiting(call)
    call.socket.feed("not json", media())
    await call.session.until(lambda: call.session.audio_sent)
    assert call.bridge.stats.bad_messages == 1
    assert call.socket.laned == 0  # the media behind it waited its turn too
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_agent_audio_goes_down_as_media_then_a_mark_at_turn_end() -> None:
    call = begin()
    await call.connected()
    call.session.push(AudioOut(tone(100)), TurnComplete())
    await call.socket.until(lambda: call.socket.events("mark"))
    kinds = [m["event"] for m in call.socket.messages]
    assert kinds[-1] == "mark" and set(kinds[:-1]) == {"media"}
    assert (
        len(media_frames(call.socket)) == 6
    )  # 100 ms in five frames, and the resampler's tail flushed at turn end
    assert all(m["streamSid"] == STREAM_SID for m in call.socket.messages)
    assert call.socket.events("mark")[0]["mark"]["name"] == "turn-1"
    assert "agent.speaking" in call.names()
    call.socket.feed(mark("turn-1"))  # the carrier played it all
    await call.observed.until(lambda: "agent.playback_done" in call.names())
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["frames_out"] == 6


async def test_a_keypad_entry_reaches_the_model_as_one_turn_and_the_transcript() -> None:
    call = begin()
    await call.connected()
    call.socket.feed(dtmf("1"), dtmf("2"), dtmf("3"))
    await asyncio.sleep(0.05)
    assert call.session.texts == []  # still typing
    call.socket.feed(dtmf("#"))
    await call.session.until(lambda: call.session.texts)
    assert call.session.texts == ["The caller pressed 1 2 3 # on the phone keypad."]
    assert call.bridge.transcript.entries[-1].text == call.session.texts[0]
    entry = call.event("dtmf.entry")
    assert (entry["keys"], entry["digits"]) == (4, "123#")
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_a_keypad_entry_ends_after_the_interdigit_pause() -> None:
    call = begin(dtmf_interdigit_s=0.2)
    await call.connected()
    call.socket.feed(dtmf("4"), dtmf("2"))
    await call.session.until(lambda: call.session.texts)
    assert call.session.texts == ["The caller pressed 4 2 on the phone keypad."]
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_model_bookkeeping_events_reach_the_observers() -> None:
    call = begin()
    await call.connected()
    call.session.push(
        CallerTranscript("I need "),
        CallerTranscript("advice"),
        AgentTranscript("Sure."),
        HandleUpdated("handle-1"),
        GoAway("10s"),
        Reconnected("goaway", resumed=True, elapsed_ms=42.0),
        ToolCallCancelled(("call-9",)),
        SessionEnded("test over"),
    )
    assert await call.ended() == "model_ended"
    texts = [(f["speaker"], f["text"]) for f in call.observed.all("transcript")]
    assert texts == [("caller", "I need advice"), ("agent", "Sure.")]
    assert call.bridge.transcript.handle_index == 2
    assert call.event("live.go_away")["time_left"] == "10s"
    assert call.event("live.reconnected")["resumed"] is True
    assert call.event("live.tool_call_cancelled")["ids"] == ["call-9"]
    assert call.event("call.ended")["reconnects"] == 1


async def test_the_last_words_reach_the_observers_when_the_call_ends_mid_utterance() -> None:
    call = begin()
    await call.connected()
    call.session.push(
        AgentTranscript("Goodbye, "), AgentTranscript("take care."), AudioOut(tone(20))
    )
    await call.observed.until(lambda: "agent.speaking" in call.names())  # all three handled
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    (last,) = call.observed.all("transcript")
    assert (last["speaker"], last["text"]) == ("agent", "Goodbye, take care.")
    assert call.names()[-2:] == ["transcript", "call.ended"]


# ---------------------------------------------------------------------- barge-in


async def test_barge_in_clears_the_carrier_and_drops_queued_audio() -> None:
    call = begin()
    await call.connected()
    call.session.push(AudioOut(tone(2000)))  # far more than the 40 ms lead: most is queued
    await call.socket.until(lambda: call.socket.events("media"))
    call.session.push(Interrupted())
    await call.socket.until(lambda: call.socket.events("clear"))
    after_clear = len(call.socket.sent)
    await asyncio.sleep(0.06)  # three refill periods of the 40 ms lead: nothing more may go
    assert len(call.socket.sent) == after_clear
    interrupted = call.event("agent.interrupted")
    assert interrupted["frames_dropped"] >= 90
    # The next turn plays again, after the clear.
    call.session.push(AudioOut(tone(40)))
    await call.socket.until(lambda: len(call.socket.sent) > after_clear)
    assert call.socket.messages[-1]["event"] == "media"
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["barge_ins"] == 1


# ---------------------------------------------------------------------- handoff


def handoff_call(target: str, call_id: str = "tool-1") -> ToolCall:
    args = {"target": target, "reason": "wants advice", "summary": "asked about bonds"}
    return ToolCall(call_id, HANDOFF_TOOL, args)


async def test_handoff_answers_the_tool_first_and_plays_the_old_agent_out() -> None:
    call = begin()
    await call.connected()
    call.session.push(AudioOut(tone(100)), handoff_call("agent-advisor"), AudioOut(silence(100)))
    expected_old = len(downlink_for(PCMU_8K).feed(tone(100))) + 1  # its frames and the tail
    await call.socket.until(lambda: len(media_frames(call.socket)) >= expected_old + 5)
    assert call.session.actions[1:] == [
        ("tool_response", HANDOFF_TOOL),
        ("hand_off", "agent-advisor"),
    ]
    assert call.session.tool_responses[0][2]["result"] == "transferred"
    persona, opening = call.session.handoffs[0]
    assert persona.agent.id == "agent-advisor"
    assert "[Call transfer]" in opening[0].text
    # Frame by frame: the old agent's speech (with its tail) entirely before the new agent's.
    silent = [is_silent(frame) for frame in media_frames(call.socket)]
    assert silent == [False] * expected_old + [True] * 5
    names = call.names()
    assert names.index("agent.speaking") < names.index("handoff.completed")
    completed = call.event("handoff.completed")
    assert (completed["from_agent"], completed["to_agent"]) == ("agent-triage", "agent-advisor")
    assert completed["reason"] == "wants advice"
    assert call.bridge.agent.id == "agent-advisor"
    notes = [f["text"] for f in call.observed.all("transcript") if f["speaker"] == "handoff"]
    assert notes == ["agent-triage -> agent-advisor: wants advice"]
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["handoffs"] == 1


#: The advisor on OpenAI: a Twilio call's audio is μ-law both ways there, PCM16 on Gemini.
OPENAI_ADVISOR = parse_agents(
    AGENTS_YAML.replace("    voice: Charon\n", "    voice: sage\n    provider: openai\n")
)


async def test_a_handoff_across_providers_changes_the_audio_formats_at_once() -> None:
    """From the moment the new provider's session takes over, it gets the caller's μ-law and
    the caller its audio, though the old session's close still waits for its peer."""
    gemini = FakeModelSession()
    openai = FakeModelSession(model_audio=ModelAudio(PCMU_8K, PCMU_8K, tracks_playback=True))
    gemini.close_gate = asyncio.Event()  # a close handshake whose answer is slow to come
    switch = ProviderSwitch({"gemini": lambda: gemini, "openai": lambda: openai})
    call = begin(graph=OPENAI_ADVISOR, session=gemini, new_live_session=lambda *_: switch)
    await call.connected()
    gemini.push(handoff_call("agent-advisor"))
    await gemini.until(lambda: gemini.close_calls)
    assert call.bridge.agent.id == "agent-advisor"
    frames = [bytes([0x80 + i]) * MULAW_FRAME_BYTES for i in range(4)]
    for i, payload in enumerate(frames):
        await _caller_loop_waiting(call)
        call.socket.feed(media(payload, seq=2 + i))
    await openai.until(lambda: len(openai.audio_sent) == len(frames))
    assert openai.audio_sent == frames  # μ-law as sent, never PCM16 meant for Gemini
    assert gemini.audio_sent == []
    assert openai.lane is not None
    spoken = bytes(i % 256 for i in range(2 * MULAW_FRAME_BYTES))  # μ-law, 40 ms: the lead
    openai.lane(AudioOut(spoken))
    await call.socket.until(lambda: spoken in b"".join(media_frames(call.socket)))
    gemini.close_gate.set()
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert openai.close_calls == 1
    assert call.event("handoff.completed")["to_agent"] == "agent-advisor"


async def test_what_the_caller_says_while_the_new_provider_connects_reaches_the_new_agent() -> None:
    """Audio and keypad entries, held while the new session opens (its formats unknown yet,
    the old agent on its way out), then sent to it first, in order, ahead of what follows."""
    gemini = FakeModelSession()
    openai = FakeModelSession(model_audio=ModelAudio(PCMU_8K, PCMU_8K, tracks_playback=True))
    openai.open_gate = asyncio.Event()  # a connect that takes a while
    switch = ProviderSwitch({"gemini": lambda: gemini, "openai": lambda: openai})
    call = begin(graph=OPENAI_ADVISOR, session=gemini, new_live_session=lambda *_: switch)
    await call.connected()
    call.socket.feed(media(b"\x11" * MULAW_FRAME_BYTES, seq=2))
    await gemini.until(lambda: gemini.audio_sent)
    gemini.push(handoff_call("agent-advisor"))
    await openai.until(lambda: openai.opened)
    during = [bytes([0x80 + i]) * MULAW_FRAME_BYTES for i in range(5)]
    for i, payload in enumerate(during):
        await _caller_loop_waiting(call)
        call.socket.feed(media(payload, seq=3 + i))
    call.socket.feed(dtmf("7"), dtmf("#"))
    await call.observed.until(lambda: "dtmf.entry" in call.names())
    await _caller_loop_waiting(call)
    assert len(gemini.audio_sent) == 1  # the old agent heard none of it
    assert gemini.texts == []
    assert openai.audio_sent == []
    openai.open_gate.set()
    await openai.until(lambda: len(openai.audio_sent) == len(during) and openai.texts)
    assert openai.audio_sent == during
    assert openai.texts == ["The caller pressed 7 # on the phone keypad."]
    after = b"\x22" * MULAW_FRAME_BYTES
    call.socket.feed(media(after, seq=3 + len(during)))
    await openai.until(lambda: len(openai.audio_sent) == len(during) + 1)
    assert openai.audio_sent[-1] == after
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.event("call.ended")["frames_in"] == 2 + len(during)


async def test_handoff_to_an_unknown_agent_is_refused_and_the_call_goes_on() -> None:
    call = begin()
    await call.connected()
    call.session.push(handoff_call("agent-nobody"))
    await call.session.until(lambda: call.session.tool_responses)
    response = call.session.tool_responses[0][2]
    assert "agent-nobody" in response["error"] and "agent-advisor" in response["error"]
    assert call.event("handoff.rejected")["target"] == "agent-nobody"
    assert not call.session.handoffs
    call.socket.feed(media())  # still a call
    await call.session.until(lambda: call.session.audio_sent)
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert "handoff.completed" not in call.names()


async def test_an_unknown_tool_gets_an_error_answer() -> None:
    call = begin()
    await call.connected()
    call.session.push(ToolCall("tool-7", "get_weather", {"city": "Oslo"}))
    await call.session.until(lambda: call.session.tool_responses)
    assert call.session.tool_responses == [("tool-7", "get_weather", {"error": "unknown tool"})]
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"


async def test_a_handoff_that_cannot_connect_ends_the_call_as_model_failure() -> None:
    session = FakeModelSession(handoff_error=ModelConnectError("refused", code=1011))
    call = begin(session=session)
    await call.connected()
    session.push(handoff_call("agent-advisor"))
    assert await call.ended() == "model_ended"
    assert session.actions[1:3] == [("tool_response", HANDOFF_TOOL), ("hand_off", "agent-advisor")]
    assert call.fallbacks == [GRAPH.fallback(GRAPH.agent("agent-advisor"))]


# ---------------------------------------------------------------------- the end of a call


async def test_caller_stop_ends_the_call_without_hanging_up() -> None:
    call = begin()
    await call.connected()
    call.socket.feed(stop())
    assert await call.ended() == "caller_hung_up"
    assert call.hang_ups == [] and call.fallbacks == []
    assert call.socket.closes[0] == (1000, "call ended")
    assert call.session.actions[-1] == ("close", "")


async def test_a_stop_that_races_a_failed_send_still_ends_the_call_as_hung_up() -> None:
    # The carrier sends stop and closes while the agent speaks: the send to the closed socket
    # fails before the caller loop reads the stop. The record must say the caller hung up.
    call = begin()
    await call.connected()
    call.socket.hang_up_on_send = stop()
    call.session.push(AudioOut(tone(200)))
    assert await call.ended() == "caller_hung_up"
    assert call.hang_ups == []


async def test_a_closed_carrier_socket_ends_the_call() -> None:
    call = begin()
    await call.connected()
    call.socket.disconnect()
    assert await call.ended() == "caller_disconnected"
    assert call.hang_ups == []


@pytest.mark.parametrize("fallback_handles", [False, True])
async def test_model_end_gives_the_agents_fallback_then_hangs_up(fallback_handles: bool) -> None:
    call = begin(fallback_handles=fallback_handles)
    await call.connected()
    call.session.push(SessionEnded("model gone", code=1011))
    assert await call.ended() == "model_ended"
    assert [f.say for f in call.fallbacks] == ["Sorry, triage cannot continue."]
    assert call.hang_ups == ([] if fallback_handles else [CALL_SID])


async def test_idle_call_times_out() -> None:
    call = begin(idle_timeout_s=0.05)
    await call.connected()
    assert await call.ended() == "idle_timeout"


async def test_call_past_its_duration_limit_ends() -> None:
    call = begin(idle_timeout_s=0.2, max_duration_s=0.05)
    await call.connected()
    assert await call.ended() == "max_duration"


async def test_request_end_ends_the_call_with_that_reason() -> None:
    call = begin()
    await call.connected()
    call.bridge.request_end("drained")
    assert await call.ended() == "drained"
    assert call.fallbacks == []
    assert call.hang_ups == [CALL_SID]


# ---------------------------------------------------------------------- before the call


async def test_no_start_in_time() -> None:
    call = begin(start_call=False, start_timeout_s=0.05)
    call.socket.feed(connected())
    assert await call.ended(session_created=False) == "no_start"
    assert call.session.opened == []


async def test_stop_before_start_is_a_dropped_message() -> None:
    """Twilio sends nothing before ``start`` but ``connected``: a ``stop`` then is malformed."""
    call = begin(start_call=False)
    call.socket.feed(connected(), stop())
    call.socket.disconnect()
    assert await call.ended(session_created=False) == "caller_disconnected_before_start"
    assert call.event("call.ended")["bad_messages"] == 1


async def test_unauthorized_stream_is_closed_with_1008() -> None:
    call = begin(admit=Refusal("unauthorized", "token for another call"))
    assert await call.ended(session_created=False) == "unauthorized"
    assert call.socket.closes[0] == (1008, "unauthorized")
    assert call.fallbacks == [] and call.hang_ups == []
    assert call.session.opened == []


async def test_over_capacity_the_caller_hears_busy() -> None:
    call = begin(admit=Refusal("rejected_capacity", "no room"))
    assert await call.ended(session_created=False) == "rejected_capacity"
    assert call.fallbacks == [BUSY]
    assert call.socket.closes[0] == (1000, "busy")


async def test_model_unavailable_at_open() -> None:
    session = FakeModelSession(open_error=ModelConnectError("no route", permanent=True))
    call = begin(session=session)
    assert await call.ended() == "model_unavailable"
    assert [f.say for f in call.fallbacks] == ["Sorry, triage cannot continue."]
    assert "call.connected" not in call.names()


# ---------------------------------------------------------------------- hostile input


async def test_malformed_messages_are_tolerated_up_to_the_limit() -> None:
    call = begin(max_bad_messages=3, max_message_bytes=4096)
    await call.connected()
    call.socket.feed("not json", b"\x00binary", json.dumps({"event": "bogus"}))
    call.socket.feed(media())  # still served after three
    await call.session.until(lambda: call.session.audio_sent)
    call.socket.feed("x" * 5000)  # the fourth: over the limit
    assert await call.ended() == "protocol_error"
    assert call.event("call.ended")["bad_messages"] == 4
