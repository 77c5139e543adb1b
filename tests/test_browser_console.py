"""The console in a real headless browser (Debian's Chromium, driven by Playwright), against
the real server, the real SDK and the Live simulator: the page loads clean and offline, asks
for the token, shows a live call as it happens and ends it, shows past calls with their
record and recording, draws the agents, and talks to them from a (fake) microphone, with
barge-in. Each view is saved as a screenshot (tests/browser.py)."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, expect

from callsim.callers.audio import Silence, Tone
from callsim.live.script import Step
from gateway.audio.analysis import dominant_frequency, rms_dbfs
from tests.browser import browser_page, require_browser, screenshot
from tests.harness import ADMIN_TOKEN, Harness, agents, running
from tests.servers import until

pytestmark = [pytest.mark.timeout(120)]

CALLER_HZ = 700.0
GREETING_HZ = 500.0
ANSWER_HZ = 600.0


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


async def log_in(page: Page, h: Harness, token: str = ADMIN_TOKEN) -> None:
    await page.goto(f"{h.gateway.url}/console")
    await page.fill("#token", token)
    await page.click("#login")
    await expect(page.locator("#tab-live")).to_be_visible()


async def test_the_page_asks_for_the_token_loads_clean_and_offline_and_shows_each_view(
    tmp_path: Path,
) -> None:
    graph = agents(agent_advisor={"tools": ["end_call"]})  # a warning: no carrier API key
    async with running(graph=graph, admin_api_token=ADMIN_TOKEN,
                       database_url=f"sqlite:///{tmp_path}/calls.db") as h:  # fmt: skip
        async with browser_page(h.gateway.url) as (page, watch):
            await page.goto(f"{h.gateway.url}/console")
            await expect(page.locator("#token")).to_be_visible()
            assert await page.locator("#tab-live").count() == 0  # no console before the token
            await screenshot(page, "login")
            await page.fill("#token", "not-the-token")
            await page.click("#login")
            await expect(page.locator("#message")).to_contain_text("not the admin token")
            watch.errors.clear()  # the browser reports the 401 of a refused login as an error
            await log_in(page, h)
            for view in ("live", "recent", "agents", "talk"):
                await page.click(f"#tab-{view}")
                await expect(page.locator(f"#view-{view}")).to_be_visible()
                await page.wait_for_timeout(300)
                await screenshot(page, f"view-{view}")
            await page.click("#tab-agents")
            stages = page.locator("#agents-graph .stage")
            await expect(stages).to_have_count(2)
            assert await page.locator("#agents-graph .edge-next").count() == 1
            assert await page.locator("#agents-graph .edge-return").count() == 1
            await expect(page.locator("#agents-warnings")).to_contain_text("end_call")
            await page.click("#logout")
            await expect(page.locator("#token")).to_be_visible()
        watch.clean()


async def test_a_live_call_appears_with_its_transcript_as_it_happens_and_is_ended_from_the_page(
    tmp_path: Path,
) -> None:
    steps = [
        Step(on="caller", hear="I would like to check my order.", say="Of course.", seconds=0.6),
        Step(on="caller", hear="It is order A17.", say="Let me look.", seconds=0.6),
    ]
    caller_says = [Tone(CALLER_HZ, 0.8), Silence(2.5), Tone(CALLER_HZ, 0.8), Silence(40)]
    async with running(steps=steps, carrier_api=True, admin_api_token=ADMIN_TOKEN,
                       database_url=f"sqlite:///{tmp_path}/calls.db") as h:  # fmt: skip
        async with browser_page(h.gateway.url) as (page, watch):
            await log_in(page, h)
            call = asyncio.create_task(h.call(caller_says, linger_s=0.1))
            card = page.locator(".live-call")
            await expect(card).to_have_count(1, timeout=10_000)
            transcript = card.locator(".transcript")
            await expect(transcript).to_contain_text("I would like to check my order.")
            await expect(transcript).to_contain_text("Of course.")
            await expect(card).to_contain_text("***0123")  # masked
            await expect(card).to_contain_text("agent-triage")
            await expect(card).not_to_contain_text("+14155550123")
            # Updating as the call goes on: the second exchange arrives while the page is open.
            await expect(transcript).to_contain_text("It is order A17.", timeout=10_000)
            await expect(transcript).to_contain_text("Let me look.")
            await screenshot(page, "live-call")
            call_id = await card.get_attribute("data-call-id")
            await card.locator(".end-call").click()
            result = await asyncio.wait_for(call, 10)
            await expect(page.locator(".live-call")).to_have_count(0, timeout=10_000)
            await screenshot(page, "live-call-ended")
        watch.clean()
    assert call_id == result.call_sid
    assert h.named("call.ended")[-1]["reason"] == "operator_ended"
    assert result.after_stream == ["Hangup"]  # hung up through the carrier's API


async def test_recent_calls_show_a_record_with_its_timeline_and_recording(tmp_path: Path) -> None:
    steps = [Step(on="caller", hear="Advice, please.")]  # the default: a handoff follows
    async with running(steps=steps, admin_api_token=ADMIN_TOKEN,
                       recordings_dir=str(tmp_path / "recordings"),
                       database_url=f"sqlite:///{tmp_path}/calls.db") as h:  # fmt: skip
        result = await h.call(
            [Tone(CALLER_HZ, 0.8), Silence(2.0), Tone(CALLER_HZ, 0.8), Silence(2.5)],
            linger_s=0.1,
        )
        records = h.gateway.state.records
        assert records is not None
        await until(lambda: not records.writing)
        async with browser_page(h.gateway.url) as (page, watch):
            await log_in(page, h)
            await page.click("#tab-recent")
            row = page.locator(f'.recent-call[data-call-id="{result.call_sid}"]')
            await expect(row).to_be_visible(timeout=10_000)
            await expect(row).to_contain_text("***0123")
            await row.click()
            detail = page.locator("#call-detail")
            await expect(detail).to_contain_text("Advice, please.")
            await expect(detail.locator(".timeline")).to_contain_text("agent-advisor")
            player = page.locator("#recording-player")
            await expect(player).to_be_visible()
            # The player can fetch and decode the recording (the cookie is its credential).
            duration = await player.evaluate(
                """async (audio) => { audio.preload = 'auto';
                     await new Promise((ok, no) => { audio.onloadedmetadata = ok;
                                                     audio.onerror = no; });
                     return audio.duration; }"""
            )
            await screenshot(page, "recent-call")
        watch.clean()
    assert duration > 4.0


def microphone_wav(path: Path) -> Path:
    """What the fake microphone says: 2.5 s of silence, 1 s of a 700 Hz tone, then silence."""
    rate = 16_000
    tone = Tone(CALLER_HZ, 1.0, -10).pcm(rate)
    pcm = Silence(2.5).pcm(rate) + tone + Silence(8.0).pcm(rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


async def test_talking_from_the_browser_reaches_the_model_and_barge_in_clears_playback(
    tmp_path: Path,
) -> None:
    """The fake microphone's tone reaches the Live simulator as 16 kHz PCM; the greeting is
    played (measured with the page's AnalyserNode); the tone, said over the greeting, is a
    barge-in that silences it at once; then the agent's answer plays."""
    graph = agents(agent_triage={"greeting": "Greet the caller."})
    steps = [
        Step(on="text", say="Hello, this is a long greeting.", seconds=8.0, tone_hz=GREETING_HZ),
        Step(on="caller", hear="I have a question.", say="Go ahead.", seconds=1.5,
             tone_hz=ANSWER_HZ),
    ]  # fmt: skip
    async with running(steps=steps, graph=graph, admin_api_token=ADMIN_TOKEN) as h:
        async with browser_page(h.gateway.url, microphone=microphone_wav(tmp_path / "mic.wav")) as (
            page,
            watch,
        ):
            await log_in(page, h)
            await page.click("#tab-talk")
            await page.click("#talk-start")
            talk = "window.callbridgeConsole.talk"

            async def until_page(condition: str, timeout_ms: float) -> None:
                # A function, not an expression: the page's CSP allows no eval.
                await page.wait_for_function(f"() => {condition}", timeout=timeout_ms)

            await until_page(f"{talk}.state === 'live'", 10_000)
            # The greeting plays.
            await until_page(f"{talk}.level() > -30", 10_000)
            # The tone barges in: the gateway's clear empties the player at once.
            await until_page(f"{talk}.clears >= 1", 10_000)
            cleared = await page.evaluate("performance.now()")
            await until_page(f"{talk}.level() < -60", 2_000)
            silent = await page.evaluate("performance.now()")
            await expect(page.locator("#talk-transcript")).to_contain_text(
                "I have a question.", timeout=10_000
            )
            # The answer to the caller plays after it.
            await until_page(f"{talk}.level() > -30", 10_000)
            await screenshot(page, "talk")
            state = await page.evaluate(
                f"({{framesSent: {talk}.framesSent, framesReceived: {talk}.framesReceived,"
                f" callId: {talk}.callId, marksEchoed: {talk}.marksEchoed}})"
            )
            await page.click("#talk-hangup")
            await until_page(f"{talk}.state === 'ended'", 10_000)
            await h.calls_finished()
        watch.clean()
        heard = bytes(h.sim.connections[0].audio_in)
    assert silent - cleared < 500  # ms from the clear to silence in the page
    assert state["framesSent"] > 100 and state["framesReceived"] > 10
    assert state["callId"].startswith("WB")
    started = h.named("call.started")[0]
    assert started["carrier"] == "web" and started["encoding"] == "L16"
    assert h.named("agent.interrupted")
    # The model heard the microphone: 16 kHz PCM carrying the 700 Hz tone, and not much else.
    samples = np.frombuffer(heard, "<i2")
    window = 16_000 // 10
    levels = [rms_dbfs(samples[i : i + window]) for i in range(0, len(samples) - window, window)]
    loudest = int(np.argmax(levels))
    tone = samples[loudest * window : (loudest + 1) * window]
    assert max(levels) > -40
    assert abs(dominant_frequency(tone, 16_000) - CALLER_HZ) < 5
