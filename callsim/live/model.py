"""The simulated model behind one Live connection: listens (energy VAD or explicit activity
signals), decides what to say (the script, else the documented defaults) and speaks as a
separate turn task, so the connection's receive loop stays free to take a ``toolResponse`` or
notice a barge-in.

Message sequence of one model turn (``[...]`` only when the setup asked for it)::

    (think_ms)  [sessionResumptionUpdate {}]          # not resumable while generating
    serverContent.modelTurn audio chunk, [outputTranscription piece], ... (paced at speed x)
    toolCall -> wait for toolResponse -> then_say chunks   # if the step has a tool call
    generationComplete, turnComplete, usageMetadata, [sessionResumptionUpdate newHandle]

For a caller turn ``[inputTranscription]`` is sent before the turn starts. A barge-in (speech
onset while the turn runs or while its audio would still be playing at real time) cancels the
turn and sends ``interrupted``, ``[toolCallCancellation]``, ``turnComplete``, ``[new handle]``.

The engine owns exactly one task at a time (the current turn) and cancels and awaits it in
:meth:`ConversationEngine.close`. A turn that fails unexpectedly reports to ``on_error`` (the
connection then closes with 1011) instead of dying unseen.

Resumption state. Client messages are numbered per connection from 0 (the setup). Every handle
captures the session as it is when issued, minus the effects of client messages after the
handle's *last consumed* message (see ``callsim.live.sessions``: a resume restores exactly that). A
message is consumed once it and every message before it have had their full effect: text,
``clientContent``, tool responses and context updates when handled; caller audio once the VAD
has decided on it (silence, a click too short to be speech, or an utterance that has ended and
is in the history). Audio of an utterance still being heard, and any message after it, is not
consumed; entries a later non-audio message already caused (a text turn and the model's answer)
are left out of the handle's state, so a client that replays everything after the index gets
them once. Only a setup with ``sessionResumption.transparent: true`` gets the index on the wire
(``lastConsumedClientMessageIndex``, as Vertex AI sends it); the Developer API never sends it.
ASSUMPTION (unverified against the real service): the setup is message 0 and the index names
the last message whose effect is in the handle's state; granularity is whole messages, so a
message whose audio straddles the end of an utterance counts as not consumed (replaying its
quiet tail is harmless).

Scheduled answers (``ModelOptions.answer_every_s``, off by default): a load generator's model
that says ``answer_s`` of audio after every ``answer_every_s`` of caller audio received, whatever
the audio holds, for callers that never stop sending (a peer benchmark's workload). The VAD and
activity signals then start no turn and nothing is a barge-in; an answer due while the previous
one is still being generated follows it. Such answers carry no transcription of the caller and
call no tools, so no handoff happens; text turns are answered as usual.

A ``toolResponse`` answers only a call pending on *this* connection (the real service does not
know a call id issued on an earlier connection of the session); any other function response is
logged, recorded in ``ConnectionRecord.stray_tool_responses`` and ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed

from callsim.live import messages
from callsim.live import protocol as proto
from callsim.live.audio import (
    OUTPUT_RATE,
    EnergyVad,
    SpeechEnded,
    SpeechStarted,
    split_chunks,
    tone_pcm16,
)
from callsim.live.records import (
    ConnectionRecord,
    HistoryEntry,
    HistoryKind,
    SessionRecord,
)
from callsim.live.script import Script, Step, Trigger, default_step
from callsim.live.voices import voice_pitch_hz
from callsim.simconnection import cancel_and_wait
from callsim.simoptions import SimOptions

logger = logging.getLogger("callsim")

AUDIO_TOKENS_PER_SECOND = 32
_WORD_RE = re.compile(r"\S+\s*")

Send = Callable[[proto.JsonObject], Awaitable[None]]


#: What a scheduled answer says (its transcript); its length is ``ModelOptions.answer_s``.
SCHEDULED_ANSWER = "Here is an answer."


@dataclass(frozen=True)
class ModelOptions(SimOptions):
    """The shared knobs (``callsim.simoptions``), how long a tool call may stay unanswered and
    scheduled answers (see the module docstring): Live's alone, as only this simulator's
    engine has them."""

    tool_timeout_s: float = 30.0
    #: Say ``answer_s`` of audio after every this many seconds of caller audio received,
    #: independent of the VAD (None: answer the utterances the VAD finds).
    answer_every_s: float | None = None
    answer_s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tool_timeout_s > 0:
            raise ValueError("tool_timeout_s must be positive")
        if self.answer_every_s is not None and not self.answer_every_s > 0:
            raise ValueError("answer_every_s must be positive")
        if not self.answer_s > 0:
            raise ValueError("answer_s must be positive")


def split_transcript(text: str, pieces: int) -> list[str]:
    """Spread the words of ``text`` over ``pieces`` slots; the slots concatenate to the text."""
    words = _WORD_RE.findall(text)
    slots = [""] * max(pieces, 1)
    for index, word in enumerate(words):
        slots[index * len(slots) // len(words)] += word
    return slots


class ConversationEngine:
    """Turn logic of one connection. Feed it client events with :meth:`handle`."""

    def __init__(
        self,
        *,
        record: ConnectionRecord,
        session: SessionRecord,
        setup: proto.SetupInfo,
        options: ModelOptions,
        script: Script | None,
        send: Send,
        issue_handle: Callable[[int], str],
        new_call_id: Callable[[], str],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._record = record
        self._session = session
        self._setup = setup
        self._options = options
        self._script = script
        self._send = send
        self._issue_handle = issue_handle
        self._new_call_id = new_call_id
        self._on_error = on_error
        self.system_instruction = setup.system_instruction
        self._turn: asyncio.Task[None] | None = None
        self._turn_entry: HistoryEntry | None = None
        self._turn_count = 0
        self._playback_end = 0.0
        self._pending_calls: dict[str, tuple[str, asyncio.Future[proto.JsonObject]]] = {}
        self._vad: EnergyVad | None = None
        self._manual_bytes: int | None = None
        self._manual_rate = proto.DEFAULT_INPUT_RATE
        # Client message bookkeeping for handles (see the module docstring).
        self._message_index = 0  # the message being handled (setup = 0)
        self._handled_index = 0  # the last message fully handled
        self._vad_bytes = 0  # bytes fed to the current VAD
        self._audio_marks: list[tuple[int, int]] = []  # (message, VAD stream end) not decided
        self._open_byte: int | None = None  # VAD stream offset where undecided audio starts
        self._manual_open: int | None = None  # the activityStart of an open manual utterance
        self._scheduled_heard_s = 0.0  # caller audio received, for scheduled answers
        self._scheduled_answers = 0  # scheduled answers started so far

    @property
    def last_consumed_index(self) -> int:
        """Index of the last client message that, with all before it, has had its full effect."""
        first_open = self._first_open_message()
        if first_open is None:
            return self._handled_index
        return min(self._handled_index, first_open - 1)

    def _first_open_message(self) -> int | None:
        candidates = [] if self._manual_open is None else [self._manual_open]
        if self._open_byte is not None:
            open_byte = self._open_byte
            audio = next((index for index, end in self._audio_marks if end > open_byte), None)
            if audio is not None:
                candidates.append(audio)
        return min(candidates, default=None)

    @property
    def speaking(self) -> bool:
        """Generating, or audio already sent would still be playing on a real-time client."""
        generating = self._turn is not None and not self._turn.done()
        return generating or time.monotonic() < self._playback_end

    async def close(self) -> None:
        """Cancel and await the running turn; resolve nothing further."""
        turn, self._turn = self._turn, None
        await cancel_and_wait(turn)

    async def handle_message(self, index: int, events: Sequence[proto.ClientEvent]) -> None:
        """Apply the events of client message ``index`` (called by the receive loop)."""
        self._message_index = index
        for event in events:
            await self.handle(event)
        self._handled_index = index

    async def handle(self, event: proto.ClientEvent) -> None:
        """Apply one client event of the current message."""
        if isinstance(event, proto.AudioIn):
            await self._on_audio(event)
        elif isinstance(event, proto.OtherMediaIn):
            self._note_mime(event.mime_type)
        elif isinstance(event, proto.TextIn):
            self._record.realtime_texts.append(event.text)
            self._remember("text", event.text, message_index=self._message_index)
            await self._answer("text")
        elif isinstance(event, proto.ActivityIn):
            await self._on_activity(event.kind)
        elif isinstance(event, proto.ClientContentIn):
            await self._on_client_content(event)
        elif isinstance(event, proto.ToolResponseIn):
            self._on_tool_response(event)
        else:
            self._record.context_updates.append(event.raw)
            if event.system_instruction is not None:
                self.system_instruction = event.system_instruction

    # --- listening -----------------------------------------------------------------------------

    def _note_mime(self, mime_type: str) -> None:
        if mime_type not in self._record.realtime_mime_types:
            self._record.realtime_mime_types.append(mime_type)

    async def _on_audio(self, audio: proto.AudioIn) -> None:
        self._note_mime(audio.mime_type)
        if not audio.pcm:
            return
        now = time.monotonic()
        if self._record.audio_in_started_at is None:
            self._record.audio_in_started_at = now
        self._record.audio_in_chunks.append((now, len(audio.pcm)))
        self._record.audio_in += audio.pcm
        if self._options.answer_every_s is not None:
            self._answer_on_schedule(self._options.answer_every_s, len(audio.pcm) / 2 / audio.rate)
            return
        if self._setup.manual_activity:
            self._manual_rate = audio.rate
            if self._manual_bytes is not None:
                self._manual_bytes += len(audio.pcm)
            return
        if self._vad is None or self._vad.sample_rate != audio.rate:
            self._vad = EnergyVad(
                audio.rate,
                self._options.vad_threshold_dbfs,
                self._options.vad_start_ms,
                self._options.vad_silence_ms,
            )
            self._vad_bytes = 0  # what the old detector had not decided on is gone
            self._audio_marks.clear()
            self._open_byte = None
        vad = self._vad
        self._vad_bytes += len(audio.pcm)
        self._audio_marks.append((self._message_index, self._vad_bytes))
        for vad_event in vad.feed(audio.pcm):
            await self._on_vad(vad, vad_event)
        self._settle_audio(vad)

    def _settle_audio(self, vad: EnergyVad) -> None:
        """After a message's audio: note where undecided audio starts, forget decided marks."""
        self._open_byte = open_byte = vad.undecided_from
        if open_byte is None:
            self._audio_marks.clear()
        else:
            self._audio_marks = [mark for mark in self._audio_marks if mark[1] > open_byte]

    async def _on_vad(self, vad: EnergyVad, event: SpeechStarted | SpeechEnded) -> None:
        if isinstance(event, SpeechStarted):
            self._open_byte = vad.byte_offset(event.at_s)  # undecided until the utterance ends
            if self.speaking:
                await self._interrupt()
        else:
            self._open_byte = None  # in the history before anything can issue a handle
            await self._on_utterance(event.duration_s)

    async def _on_activity(self, kind: str) -> None:
        self._record.activity.append((time.monotonic(), kind))
        if kind == "audioStreamEnd":
            vad = self._vad
            if vad is not None:
                for vad_event in vad.flush():
                    await self._on_vad(vad, vad_event)
                self._settle_audio(vad)
            return
        if not self._setup.manual_activity or self._options.answer_every_s is not None:
            # Activity signals only apply when automatic detection is disabled, and never to
            # scheduled answers.
            return
        if kind == "activityStart":
            self._manual_bytes = 0
            self._manual_open = self._message_index
            if self.speaking:
                await self._interrupt()
        elif self._manual_bytes is not None:
            seconds = self._manual_bytes / 2 / self._manual_rate
            self._manual_bytes = None
            self._manual_open = None
            await self._on_utterance(seconds)

    async def _on_client_content(self, content: proto.ClientContentIn) -> None:
        self._record.client_contents.append(content.raw)
        turns = list(content.turns)
        final: tuple[str, str] | None = None
        if content.turn_complete and turns and turns[-1][0] == "user":
            final = turns.pop()
        for role, text in turns:
            self._remember("seed", text, role=role, message_index=self._message_index)
        if content.turn_complete:
            self._remember(
                "text", final[1] if final else "", role="user", message_index=self._message_index
            )
            await self._answer("text")

    def _on_tool_response(self, response: proto.ToolResponseIn) -> None:
        for item in response.responses:
            self._record.tool_responses.append(item)
            call_id = item.get("id") or self._pending_id_for(item.get("name"))
            pending = self._pending_calls.get(call_id) if isinstance(call_id, str) else None
            if pending is None or pending[1].done():
                # Issued on an earlier connection, already answered, cancelled or timed out, or
                # never issued: the model has no such open call here.
                logger.info(
                    "connection %d: toolResponse for %r answers no call pending on this "
                    "connection; ignored",
                    self._record.index,
                    call_id,
                )
                self._record.stray_tool_responses.append(item)
                continue
            self._remember(
                "tool_response",
                str(item.get("name", "")),
                data=item,
                message_index=self._message_index,
            )
            pending[1].set_result(item)

    def _pending_id_for(self, name: object) -> str | None:
        matches = [cid for cid, (call, _) in self._pending_calls.items() if call == name]
        return matches[0] if len(matches) == 1 else None

    async def _on_utterance(self, seconds: float) -> None:
        session = self._session
        session.caller_utterances += 1
        seconds = round(seconds, 3)
        step = self._take_step("caller")
        hear = f"caller utterance {session.caller_utterances} ({seconds:.1f} s)"
        if step is not None and step.hear is not None:
            hear = step.hear
        if step is None:
            step = default_step(
                "caller",
                system_instruction=self.system_instruction,
                function_declarations=self._setup.function_declarations,
                caller_turns_answered=session.caller_turns_answered(self.system_instruction),
                heard=[*session.heard_by(self.system_instruction), hear],
            )
        self._remember("caller", hear, seconds=seconds)
        if self._setup.input_transcription:
            await self._send(messages.input_transcription(hear))
        await self._start_turn(step, "caller")

    def _answer_on_schedule(self, every_s: float, seconds: float) -> None:
        """Count ``seconds`` more caller audio; start each scheduled answer that falls due."""
        self._scheduled_heard_s += seconds
        # The tolerance absorbs float sums: 75 frames of 20 ms are 1.5 s.
        while self._scheduled_heard_s >= every_s * (self._scheduled_answers + 1) - 1e-6:
            self._scheduled_answers += 1
            step = Step(on="caller", say=SCHEDULED_ANSWER, seconds=self._options.answer_s)
            self._turn_count += 1
            self._turn = asyncio.create_task(
                self._after(self._turn, step),
                name=f"sim-conn{self._record.index}-turn{self._turn_count}",
            )

    async def _after(self, previous: asyncio.Task[None] | None, step: Step) -> None:
        """A scheduled answer: after the previous turn, never cutting it off. Awaiting it (not
        ``asyncio.wait``) means cancelling this turn cancels the chain, as :meth:`close`
        cancels only the newest turn."""
        if previous is not None:
            await previous
        await self._run_turn(step, "caller", None)

    # --- answering -----------------------------------------------------------------------------

    def _take_step(self, trigger: Trigger) -> Step | None:
        if self._script is None:
            return None
        return self._script.take(trigger, self.system_instruction)

    async def _answer(self, trigger: Trigger) -> None:
        step = self._take_step(trigger) or default_step(
            trigger,
            system_instruction=self.system_instruction,
            function_declarations=self._setup.function_declarations,
            caller_turns_answered=self._session.caller_turns_answered(self.system_instruction),
            heard=self._session.heard_by(self.system_instruction),
        )
        await self._start_turn(step, trigger)

    async def _start_turn(self, step: Step, trigger: Trigger) -> None:
        # A text turn's effects belong to its message (left out of a handle that has not
        # consumed it); a caller turn's belong to audio already in the history.
        cause = self._message_index if trigger == "text" else None
        if self.speaking:
            await self._interrupt(cause)
        await cancel_and_wait(self._turn)  # a finished turn: reap it
        self._turn_count += 1
        self._turn = asyncio.create_task(
            self._run_turn(step, trigger, cause),
            name=f"sim-conn{self._record.index}-turn{self._turn_count}",
        )

    def _handle_update(self) -> proto.JsonObject:
        """Issue a handle for the state as it is now; the ``sessionResumptionUpdate`` to send."""
        consumed = self.last_consumed_index
        handle = self._issue_handle(consumed)
        self._record.handles_issued.append((handle, consumed))
        return messages.resumption_update(handle, consumed if self._setup.transparent else None)

    async def _interrupt(self, cause: int | None = None) -> None:
        """Barge-in: stop the turn at once, tell the client, close the turn."""
        cancelled_calls = list(self._pending_calls)
        turn, self._turn = self._turn, None
        await cancel_and_wait(turn)
        self._playback_end = 0.0
        if self._turn_entry is not None:
            self._turn_entry.interrupted = True  # cut off while generating or still playing
        await self._send(messages.server_flag("interrupted"))
        if cancelled_calls:
            await self._send(messages.tool_call_cancellation(cancelled_calls))
            for call_id in cancelled_calls:
                self._remember("tool_cancelled", call_id, message_index=cause)
        await self._send(messages.server_flag("turnComplete"))
        if self._setup.resumption_requested:
            await self._send(self._handle_update())

    async def _run_turn(self, step: Step, trigger: Trigger, cause: int | None) -> None:
        entry = self._turn_entry = self._remember("model", "", trigger=trigger, message_index=cause)
        spoken_seconds = 0.0
        try:
            await asyncio.sleep(self._options.think_ms / 1000)
            if self._setup.resumption_requested:
                await self._send(messages.resumption_update(None))
            if step.say:
                spoken_seconds += await self._speak(step.say, step.say_seconds, step, entry)
            if step.tool_call is not None:
                answered = await self._call_tool(step.tool_call.name, step.tool_call.args, cause)
                if answered and step.then_say:
                    # Transcript pieces carry their own spacing, as Gemini's do.
                    then_say = f" {step.then_say}" if entry.text else step.then_say
                    spoken_seconds += await self._speak(
                        then_say, step.then_say_seconds, step, entry
                    )
            await self._send(messages.server_flag("generationComplete"))
            await self._send(messages.server_flag("turnComplete"))
            await self._send(self._usage(spoken_seconds))
            if self._setup.resumption_requested:
                await self._send(self._handle_update())
        except ConnectionClosed:
            entry.interrupted = True
        except Exception as exc:  # a simulator bug: report it and let the owner close (1011)
            logger.exception("connection %d: turn failed", self._record.index)
            self._on_error(exc)

    async def _speak(self, text: str, seconds: float, step: Step, entry: HistoryEntry) -> float:
        """Send ``text`` as paced audio chunks with transcript pieces; return the audio length."""
        hz = step.tone_hz if step.tone_hz is not None else voice_pitch_hz(self._setup.voice)
        pcm = tone_pcm16(hz, seconds, step.level_dbfs, OUTPUT_RATE)
        chunk_bytes = 2 * max(1, OUTPUT_RATE * self._options.chunk_ms // 1000)
        chunks = split_chunks(pcm, chunk_bytes)
        pieces = split_transcript(text, len(chunks))
        audio_out = "AUDIO" in self._setup.response_modalities
        started = time.monotonic()
        sent_seconds = 0.0
        for index, chunk in enumerate(chunks):
            if audio_out:
                await self._send(messages.audio_chunk(chunk))
                chunk_seconds = len(chunk) / 2 / OUTPUT_RATE
                self._playback_end = max(self._playback_end, time.monotonic()) + chunk_seconds
            elif pieces[index]:
                await self._send(messages.text_chunk(pieces[index]))
            if pieces[index]:
                if audio_out and self._setup.output_transcription:
                    await self._send(messages.output_transcription(pieces[index]))
                entry.text += pieces[index]
            sent_seconds += len(chunk) / 2 / OUTPUT_RATE
            delay = started + sent_seconds / self._options.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return sent_seconds

    async def _call_tool(self, name: str, args: proto.JsonObject, cause: int | None) -> bool:
        """Issue a function call and wait for its response; False if it timed out."""
        if _arguments_unseen(self._setup.function_declarations, name):
            # The real Live API ignores parametersJsonSchema: the model never learns the
            # arguments and calls the function with none (googleapis/python-genai#1147).
            logger.warning("%s declared with parametersJsonSchema only: called without "
                           "arguments, as Gemini Live does", name)  # fmt: skip
            args = {}
        call_id = self._new_call_id()
        future: asyncio.Future[proto.JsonObject] = asyncio.get_running_loop().create_future()
        self._pending_calls[call_id] = (name, future)
        try:
            await self._send(messages.tool_call([(call_id, name, args)]))
            self._remember(
                "tool_call",
                name,
                data={"id": call_id, "name": name, "args": args},
                message_index=cause,
            )
            try:
                await asyncio.wait_for(future, self._options.tool_timeout_s)
            except TimeoutError:
                logger.warning(
                    "no toolResponse for %s (%s) within %.1f s; cancelling the call",
                    call_id,
                    name,
                    self._options.tool_timeout_s,
                )
                del self._pending_calls[call_id]
                await self._send(messages.tool_call_cancellation([call_id]))
                self._remember("tool_cancelled", call_id, message_index=cause)
                return False
            return True
        finally:
            self._pending_calls.pop(call_id, None)

    def _usage(self, spoken_seconds: float) -> proto.JsonObject:
        """This turn's ``usageMetadata``, per turn as the real service reports it (a probe of
        it: pydantic/pydantic-ai#7269), not a running total of the session.

        As there, the prompt is everything the model processed for the turn, so it grows
        through a conversation: the system instruction and tool declarations (why a real
        first "hello" costs a few hundred tokens, googleapis/python-genai#1917), the caller
        audio this connection heard, and the conversation the session knows, as text at ~4
        characters a token. The response is this turn's audio alone.
        """
        prompt_audio = round(self._record.audio_in_seconds * AUDIO_TOKENS_PER_SECOND)
        prompt_text = prompt_text_tokens(
            self.system_instruction,
            self._setup.function_declarations,
            [entry.text for entry in self._session.known],
        )
        response = max(1, round(spoken_seconds * AUDIO_TOKENS_PER_SECOND))
        return messages.usage_metadata(prompt_audio, prompt_text, response)

    def _remember(
        self,
        kind: HistoryKind,
        text: str,
        *,
        role: str = "",
        trigger: str | None = None,
        data: proto.JsonObject | None = None,
        seconds: float | None = None,
        message_index: int | None = None,
    ) -> HistoryEntry:
        entry = HistoryEntry(
            kind=kind,
            text=text,
            connection_index=self._record.index,
            voice=self._setup.voice,
            system_instruction=self.system_instruction,
            at=time.monotonic(),
            role=role,
            trigger=trigger,
            data=data,
            seconds=seconds,
            message_index=message_index,
            # Another connection has resumed the session since: it never learns of this.
            lost=self._session.connection_indexes[-1] != self._record.index,
        )
        self._session.history.append(entry)
        return entry


def prompt_text_tokens(
    system_instruction: str, declarations: Sequence[proto.JsonObject], context: Sequence[str]
) -> int:
    """Text tokens of a turn's prompt, at ~4 characters a token: instruction, tools, context."""
    tools = len(json.dumps(list(declarations))) if declarations else 0
    return (len(system_instruction) + tools + sum(len(text) for text in context)) // 4


def _arguments_unseen(declarations: Sequence[proto.JsonObject], name: str) -> bool:
    """Whether the function ``name`` describes its arguments only as ``parametersJsonSchema``,
    which Gemini Live does not read."""
    for declaration in declarations:
        if declaration.get("name") == name:
            return "parametersJsonSchema" in declaration and "parameters" not in declaration
    return False
