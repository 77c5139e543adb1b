"""Agents that act, end to end: the Live simulator calls ``end_call`` and ``transfer_call`` the
way Gemini does, the real gateway carries them out through each carrier's documented API (the
carriers' fake APIs), and the caller simulator records what it heard and what ran afterwards.
A quiet line is checked on and then ended the same way."""

from __future__ import annotations

import pytest

from callsim.callers.audio import Silence, Tone, render
from callsim.callers.result import CallResult
from callsim.callers.twilio import TwilioCaller
from callsim.live.script import Step, ToolCallSpec
from gateway.audio.analysis import rms_dbfs
from gateway.carriers.markup import dial_document
from tests.audio_checks import audible_s
from tests.harness import CARRIER_KINDS, TWILIO_AUTH_TOKEN, Carrier, Harness, agents, running

BYE = "Thank you for calling. Goodbye!"
FAREWELL = [Step(on="caller", hear="That's all, thanks.", say=BYE, seconds=1.5,
                 tool_call=ToolCallSpec("end_call", {"reason": "the caller is done"}))]  # fmt: skip
TRANSFERS = {"billing": "+15551234567", "desk": "sip:desk@pbx.example.com"}


def transfer_steps(destination: str, then_say: str | None = None) -> list[Step]:
    call = ToolCallSpec("transfer_call", {"destination": destination, "reason": "billing"})
    notice = "Let me transfer you to billing."
    return [Step(on="caller", hear="I have a billing question.", say=notice, seconds=1.0,
                 tool_call=call, then_say=then_say)]  # fmt: skip


def last_sound_s(result: CallResult, floor_dbfs: float = -40.0) -> float:
    """Call time (s) at which the last audible 10 ms of what the caller heard ended."""
    pcm, rate = result.heard_pcm(), result.heard_rate
    window = rate // 100 * 2
    loud = [i for i in range(0, len(pcm) - window + 1, window)
            if rms_dbfs(pcm[i : i + window]) > floor_dbfs]  # fmt: skip
    assert loud, "the caller heard nothing"
    return (loud[-1] + window) / 2 / rate


def api_paths(h: Harness, result: CallResult) -> list[tuple[str, str, object]]:
    """The end/transfer requests the gateway made for this call, as (action, path, body)."""
    kinds = {"update", "texml_update", "hangup", "transfer"}
    return [(r.action, r.path, r.body) for r in result.api_requests if r.action in kinds]


def strip_command_id(body: object) -> object:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "command_id"}
    return body


@pytest.mark.parametrize("carrier", CARRIER_KINDS, ids=str)
async def test_end_call_plays_the_farewell_in_full_then_hangs_up_with_no_apology(
    carrier: Carrier,
) -> None:
    graph = agents(agent_triage={"greeting": "", "tools": ["end_call"]})
    async with running(steps=FAREWELL, graph=graph, carrier=carrier, carrier_api=True) as h:
        result = await h.call([Tone(300, 0.6), Silence(0.5)], linger_s=12.0)
        conn = h.sim.connections[0]
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "agent_ended"
    assert result.closed_by == "gateway"
    # The farewell was heard in full (1.5 s of it), and nothing was said after it.
    assert audible_s(result.heard_pcm(), result.heard_rate) >= 1.45
    assert not any(verb.startswith("Say") for verb in result.after_stream), result.after_stream
    assert result.after_stream in (["Hangup"], [])
    # The call ended within 2 s of the caller hearing the last word.
    assert result.ended_at is not None and result.started_at is not None
    assert result.ended_at - result.started_at - last_sound_s(result) < 2.0
    (response,) = conn.tool_responses
    assert response["name"] == "end_call" and "error" not in response["response"]
    (request,) = api_paths(h, result)
    if carrier.name == "twilio":
        assert request == ("update", f"/2010-04-01/Accounts/{result.account_sid}/Calls/"
                           f"{result.call_sid}.json", {"Status": "completed"})  # fmt: skip
    elif carrier.mode == "texml":
        assert request == ("texml_update", f"/v2/texml/Accounts/{result.account_sid}/Calls/"
                           f"{result.call_sid}", {"Status": "completed"})  # fmt: skip
    else:
        assert request[:2] == ("hangup", f"/v2/calls/{result.call_control_id}/actions/hangup")


@pytest.mark.parametrize("carrier", CARRIER_KINDS, ids=str)
@pytest.mark.parametrize("destination", ["billing", "desk"])
async def test_a_transfer_reaches_the_right_number_through_the_carriers_api(
    carrier: Carrier, destination: str
) -> None:
    graph = agents(
        agent_triage={"greeting": "", "tools": ["transfer_call"], "transfers": TRANSFERS}
    )
    steps = transfer_steps(destination)
    async with running(steps=steps, graph=graph, carrier=carrier, carrier_api=True) as h:
        result = await h.call([Tone(300, 0.6), Silence(0.5)], linger_s=10.0)
        conn = h.sim.connections[0]
    to = TRANSFERS[destination]
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "transferred"
    assert result.after_stream == ([f"Sip:{to}"] if to.startswith("sip") else [f"Dial:{to}"])
    assert audible_s(result.heard_pcm(), result.heard_rate) >= 0.95  # the notice, in full
    (response,) = conn.tool_responses
    assert response["response"] == {"result": "transferred"}
    (request,) = api_paths(h, result)
    if carrier.name == "twilio":
        path = f"/2010-04-01/Accounts/{result.account_sid}/Calls/{result.call_sid}.json"
        assert request == ("update", path, {"Twiml": dial_document(to)})
    elif carrier.mode == "texml":
        path = f"/v2/texml/Accounts/{result.account_sid}/Calls/{result.call_sid}"
        assert request == ("texml_update", path, {"Texml": dial_document(to)})
    else:
        path = f"/v2/calls/{result.call_control_id}/actions/transfer"
        assert (request[0], request[1], strip_command_id(request[2])) == (
            "transfer", path, {"to": to})  # fmt: skip
    assert h.named("call.transferred")[0]["to"] == destination


async def test_a_transfer_the_carrier_refuses_is_an_error_the_agent_speaks_about() -> None:
    graph = agents(
        agent_triage={"greeting": "", "tools": ["transfer_call"], "transfers": TRANSFERS}
    )
    sorry = "Sorry, billing is not reachable. Can I help otherwise?"
    steps = transfer_steps("billing", then_say=sorry)
    # Twilio's REST API is unreachable: the transfer cannot be placed.
    settings = {"twilio_auth_token": TWILIO_AUTH_TOKEN, "twilio_api_base": "http://127.0.0.1:9"}
    async with running(steps=steps, graph=graph, **settings) as h:
        caller = TwilioCaller(
            h.gateway.url, audio=render([Tone(300, 0.6), Silence(0.5)]), linger_s=6.0,
            auth_token=TWILIO_AUTH_TOKEN,
        )  # fmt: skip
        result = await caller.run()
        await h.calls_finished()
        conn = h.sim.connections[0]
    result.raise_for_violations()
    (response,) = conn.tool_responses
    assert "did not go through" in response["response"]["error"]
    assert result.closed_by == "caller"  # still with the agent until the caller hung up
    assert result.after_stream == []
    said = " ".join(e["text"] for e in h.named("transcript") if e["speaker"] == "agent")
    assert sorry in said
    assert h.named("transfer.failed")


async def test_a_quiet_call_is_checked_on_then_ended() -> None:
    async with running(carrier_api=True, idle_prompt_s=1.0, idle_hangup_s=1.0) as h:
        result = await h.call([Silence(0.5)], linger_s=15.0)
        conn = h.sim.connections[0]
    texts = [p["text"] for c in conn.client_contents for t in c["turns"] for p in t["parts"]]
    texts += conn.realtime_texts
    assert len(texts) == 2
    assert "still there" in texts[0] and "goodbye" in texts[1]
    names = [name for _, name, _ in h.events]
    assert names.index("call.idle_check_in") < names.index("call.idle_goodbye")
    (ended,) = h.named("call.ended")
    assert ended["reason"] == "idle_ended"
    assert result.after_stream == ["Hangup"]
    # The two answers (the simulator's default text answer) were heard before the end.
    assert audible_s(result.heard_pcm(), result.heard_rate) > 2.0
