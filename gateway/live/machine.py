"""The policy of one call's Gemini Live session, as a state machine with no I/O.

The driver (:mod:`gateway.live.session`) owns sockets, tasks and the SDK; this module owns every
decision about them, so each one can be tested with plain method calls and a fake clock, the way
``h11`` and ``websockets``' ``Protocol`` are tested with plain bytes. The driver tells the machine
what happened (a connection opened or failed, a message arrived, a send failed, a connection
closed, time passed, the bridge asked for a handoff) and does what the answer says: dial with
this handle, open with this kind of opening, replay these messages, end with this reason.

What it decides, and why (sources in ``../shared/reference/gemini-live-protocol.md`` §10):

- **Phases.** ``idle`` → ``connecting`` → ``open`` → (``connecting`` again for a handoff, a
  goAway or a drop) … → ``ended``. Every dial gets a new *generation*; anything a connection
  reports after it was replaced is stale and ignored (a tool call from an old connection is
  never answered on a new one), and every new connection starts with no goAway deadline.
- **Resume without loss.** A handle restores the server's state *as of the handle* (the SDK's
  docstring of ``last_consumed_client_message_index``; ``transparent`` resumption is Vertex-only).
  So the machine keeps a :class:`Journal` of what was sent since the newest handle — caller audio
  and text turns — and a resumed connection gets it again. Where the server says how far it
  consumed (``lastConsumedClientMessageIndex``, numbered from the setup message as 0, an
  assumption: the numbering is undocumented) the journal is trimmed to what follows; without it
  a new handle empties the journal. Tool responses are not journalled: no handle is issued
  while a function call is open, so a resumed session never knows a call they would answer.
  Audio beyond ``replay_limit_ms`` or a model answer already under way since the handle make a
  text *recap* (from the gateway's transcript) the better opening: replaying the caller's audio
  would make the model start that answer again.
- **goAway.** Move at once when the handle is *current* (no caller voice and no model output
  since it) and the model is idle; otherwise at the next moment that is true (a fresh handle or
  a turn boundary with the caller silent), or at the deadline minus ``goaway_margin_s``.
- **Drops.** Counted and forgiven after ``stable_after_s`` of a stable connection; more than
  ``max_drops`` ends the session. A mid-call close with 1007/1008 (native-audio sessions are
  reported to get these and to work again after a reconnect) gets one resume, then one fresh
  session reseeded from the transcript, then the end. The very first setup of a call answered
  with 1007/1008 (a bad key, model or config) ends at once: no retry loop against a bad key.
- **Dial retries.** Transient failures are retried with backoff (the first retry is immediate);
  a rejected handle is replaced by a fresh session, whose opening reseeds it from the transcript.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

#: Close codes after which the same setup will be refused again: 1007 invalid argument (bad
#: setup), 1008 policy (unknown or expired handle; a bad key on some paths).
POLICY_CLOSE_CODES = frozenset({1007, 1008})

Phase = Literal["idle", "connecting", "open", "ended"]
#: Why a connection is being dialled.
Purpose = Literal["first", "handoff", "goaway", "dropped"]
#: What a newly opened connection must be sent first (see :class:`Opening`).
OpeningKind = Literal["first", "handoff", "replay", "recap", "reseed"]

#: Bytes per millisecond of the caller audio sent to Gemini (PCM16, 16 kHz, mono).
BYTES_PER_MS = 32
#: Unvoiced audio kept at the head of the journal when nothing voiced precedes it: enough for
#: the model to hear the start of speech in context, while a silent line costs nothing.
SILENT_LEAD_MS = 500


@dataclass(slots=True, eq=False)
class Sent:
    """A message for the model: caller audio (``pcm``) or turns (``turns``, the call's
    :class:`~gateway.model.turns.Turn` values, which the machine never looks into;
    ``complete`` asks the model to answer them)."""

    kind: Literal["audio", "turns"]
    pcm: bytes = b""
    turns: tuple[object, ...] = ()
    complete: bool = True
    voiced: bool = False
    #: (generation, index) of the connection message that carried it; None while unsent.
    carried_by: tuple[int, int] | None = None

    @property
    def ms(self) -> float:
        return len(self.pcm) / BYTES_PER_MS


@dataclass(slots=True, eq=False)
class _AudioRun:
    """Caller audio sent as consecutive messages of one connection: ``frames[i]`` went as
    message ``first + i`` of connection ``generation``. The journal's form of the frames
    :meth:`SessionMachine.record_audio` records, fifty a second per call: a list entry each,
    not a :class:`Sent` and its index tuple, which only a replay (rare) needs."""

    generation: int
    first: int
    frames: list[bytes]
    voiced: list[bool]

    def entries(self) -> list[Sent]:
        g, first = self.generation, self.first
        return [
            Sent("audio", pcm=pcm, voiced=v, carried_by=(g, first + i))
            for i, (pcm, v) in enumerate(zip(self.frames, self.voiced, strict=True))
        ]

    def drop_first(self, count: int) -> None:
        del self.frames[:count]
        del self.voiced[:count]
        self.first += count


class Journal:
    """What the model was sent, or is yet to be sent, since the newest resumption handle.

    Sent entries are the part a resume must replay; unsent ones (queued while no connection
    could take them) are delivered after any opening. Audio is bounded by ``limit_ms``: beyond
    it the oldest audio goes and :attr:`overflowed` says the replay can no longer be faithful.

    Audio sent on one connection message after message (:meth:`add_sent_audio`) is kept as a
    run, one list item per message; :attr:`entries` gives it back as one :class:`Sent` each.
    """

    def __init__(self, limit_ms: float) -> None:
        self.limit_ms = limit_ms
        self._items: deque[Sent | _AudioRun] = deque()
        self.audio_ms = 0.0
        self.overflowed = False
        #: Audio the bound pushed out (ms), over the call.
        self.dropped_ms = 0.0
        #: Whether any entry holds voiced audio (else leading silence is trimmed).
        self._voiced = False

    @property
    def entries(self) -> list[Sent]:
        """Everything journalled, in order, one :class:`Sent` per message."""
        entries: list[Sent] = []
        for item in self._items:
            if isinstance(item, _AudioRun):
                entries += item.entries()
            else:
                entries.append(item)
        return entries

    def add(self, entry: Sent) -> None:
        self._items.append(entry)
        if entry.kind != "audio":
            return
        self._added_audio(len(entry.pcm), entry.voiced)

    def add_sent_audio(self, pcm: bytes, voiced: bool, generation: int, index: int) -> None:
        """:meth:`add` of ``Sent("audio", pcm=pcm, voiced=voiced, carried_by=(generation,
        index))``, kept in a run with the messages sent just before it on that connection (the
        last item, when it is their run)."""
        run = self._run_before(generation, index)
        if run is not None:
            run.frames.append(pcm)
            run.voiced.append(voiced)
        else:
            self._items.append(_AudioRun(generation, index, [pcm], [voiced]))
        self._added_audio(len(pcm), voiced)

    def add_sent_run(
        self, frames: list[bytes], voiced: list[bool], generation: int, first: int
    ) -> None:
        """:meth:`add_sent_audio` of each of ``frames``, numbered from ``first``, in one go:
        the same journal as frame by frame. The frames join the run first, then each is
        counted in order; the silence trim and the bound take from the head, which holds only
        frames counted already, so what they take is what they took frame by frame."""
        if not frames:
            return
        run = self._run_before(generation, first)
        if run is not None:
            run.frames += frames
            run.voiced += voiced
        else:
            self._items.append(_AudioRun(generation, first, list(frames), list(voiced)))
        if self._voiced:  # no trim: the bound alone, which takes the same oldest audio
            # at the end as after each frame (every figure is a whole number of 1/32 ms, so
            # the sums are exact in any order)
            self.audio_ms += sum(map(len, frames)) / BYTES_PER_MS
            while self.audio_ms > self.limit_ms and self._drop_oldest_audio():
                pass
            return
        added = self._added_audio
        for pcm, loud in zip(frames, voiced, strict=True):
            added(len(pcm), loud)

    def _run_before(self, generation: int, index: int) -> _AudioRun | None:
        """The journal's last item, when it is the run of connection ``generation`` that
        message ``index`` continues."""
        tail = self._items[-1] if self._items else None
        if (
            isinstance(tail, _AudioRun)
            and tail.generation == generation
            and tail.first + len(tail.frames) == index
        ):
            return tail
        return None

    def _added_audio(self, size: int, voiced: bool) -> None:
        self.audio_ms += size / BYTES_PER_MS  # Sent.ms, without a call (per frame)
        self._voiced = self._voiced or voiced
        if not self._voiced:
            self._trim_silence()
        while self.audio_ms > self.limit_ms:
            if not self._drop_oldest_audio():
                break

    def unsend_last(self) -> None:
        """The message :meth:`add_sent_audio` journalled last failed as it was written: nobody
        heard it, so it is journalled as unsent, where it was (gone already, if the bound
        pushed it out: the bound takes the oldest audio first, so the run is gone with it)."""
        items = self._items
        tail = items[-1] if items else None
        if not isinstance(tail, _AudioRun):
            return
        pcm, voiced = tail.frames.pop(), tail.voiced.pop()
        if not tail.frames:
            items.pop()
        items.append(Sent("audio", pcm=pcm, voiced=voiced))

    def unsent(self) -> list[Sent]:
        return [e for e in self._items if isinstance(e, Sent) and e.carried_by is None]

    def sent(self) -> list[Sent]:
        return [e for e in self.entries if e.carried_by is not None]

    def forget_sent(self, through: tuple[int, int] | None = None) -> None:
        """Drop entries the server's state now includes: all sent ones, or those carried by
        generation ``through[0]`` up to message index ``through[1]``."""
        kept: deque[Sent | _AudioRun] = deque()
        for item in self._items:
            if isinstance(item, _AudioRun):
                if through is None or item.generation < through[0]:
                    continue
                if item.generation == through[0]:
                    included = through[1] - item.first + 1
                    if included >= len(item.frames):
                        continue
                    if included > 0:
                        item.drop_first(included)
                kept.append(item)
                continue
            carried = item.carried_by
            if carried is None or (through is not None and carried > through):
                kept.append(item)
        self._items = kept
        self.audio_ms = sum(self._audio_ms_each())  # message by message, as add() added them
        self._voiced = any(
            any(item.voiced) if isinstance(item, _AudioRun) else item.voiced for item in kept
        )
        self.overflowed = False

    def _audio_ms_each(self) -> Iterator[float]:
        for item in self._items:
            if isinstance(item, _AudioRun):
                yield from (len(pcm) / BYTES_PER_MS for pcm in item.frames)
            elif item.kind == "audio":
                yield item.ms

    def clear(self) -> None:
        self._items.clear()
        self.audio_ms = 0.0
        self._voiced = False
        self.overflowed = False

    def _trim_silence(self) -> None:
        while self.audio_ms > SILENT_LEAD_MS:
            head = self._items[0]
            if isinstance(head, _AudioRun):
                self.audio_ms -= len(head.frames[0]) / BYTES_PER_MS
                self._drop_first_frame(0, head)
                continue
            if head.kind != "audio":
                return  # a text turn is never dropped
            self._items.popleft()
            self.audio_ms -= head.ms

    def _drop_oldest_audio(self) -> bool:
        for i, item in enumerate(self._items):
            if isinstance(item, _AudioRun):
                ms = len(item.frames[0]) / BYTES_PER_MS
                self._drop_first_frame(i, item)
            elif item.kind == "audio":
                ms = item.ms
                del self._items[i]
            else:
                continue
            self.audio_ms -= ms
            self.dropped_ms += ms
            self.overflowed = True
            return True
        return False

    def _drop_first_frame(self, i: int, run: _AudioRun) -> None:
        """Drop the first message of ``run``, item ``i``; the run with it if it was the last."""
        if len(run.frames) > 1:
            run.drop_first(1)
        else:
            del self._items[i]


# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Dial:
    """Open connection ``generation``, resuming ``handle`` (None: a fresh session), after
    waiting ``delay_s``."""

    generation: int
    handle: str | None
    purpose: Purpose
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Opening:
    """What to send on a connection that just opened, before anything else.

    - ``first``: the first agent's greeting turns (a fresh call);
    - ``handoff``: the bridge's takeover turns (for a resumed or a fresh session);
    - ``replay``: ``replay`` as it is, in order (a resume that loses nothing);
    - ``recap``: a text turn telling the model what happened since the handle, from the
      transcript (the replay would be unfaithful or would restart an answer);
    - ``reseed``: a fresh session after a rejected or missing handle. With ``replay``, the
      transcript up to the handle as context, then ``replay``; without, the whole transcript.

    ``cut_off`` says whether the model was interrupted mid-answer (the recap then asks it to
    carry on). Whatever was queued meanwhile (:meth:`Journal.unsent`) follows the opening.
    """

    kind: OpeningKind
    replay: tuple[Sent, ...] = ()
    cut_off: bool = False


@dataclass(frozen=True, slots=True)
class Recover:
    """Move the conversation to a new connection: ``reason`` is ``goaway`` or ``dropped``."""

    reason: Literal["goaway", "dropped"]
    detail: str
    dial: Dial


@dataclass(frozen=True, slots=True)
class End:
    """The session is over for good."""

    reason: str
    code: int | None = None


# ---------------------------------------------------------------------------------- machine


@dataclass(frozen=True, slots=True)
class Policy:
    max_dial_attempts: int = 3
    retry_backoff_s: tuple[float, ...] = (0.0, 0.3, 1.0)
    max_drops: int = 5
    stable_after_s: float = 30.0
    goaway_margin_s: float = 2.0
    #: Without a ``timeLeft`` in the goAway, assume this much.
    goaway_default_s: float = 10.0
    #: After a turn boundary, how long to wait for the handle that usually follows it.
    boundary_grace_s: float = 0.5
    #: Caller voice within this long counts as "the caller is speaking".
    voice_hangover_s: float = 0.4
    replay_limit_ms: float = 15_000.0


@dataclass(slots=True)
class _Dialling:
    purpose: Purpose
    handle: str | None
    attempt: int = 1


@dataclass(slots=True)
class _Flags:
    """What happened since the newest handle (the resumable state's blind spot)."""

    caller_voice: bool = False
    model_output: bool = False
    #: The model's turn ended (turnComplete or interrupted) after its last output.
    model_done: bool = True


@dataclass(slots=True)
class SessionMachine:
    """See the module docstring. Times are ``time.monotonic()`` seconds, passed in."""

    policy: Policy = field(default_factory=Policy)
    phase: Phase = "idle"
    generation: int = 0
    handle: str | None = None
    journal: Journal = field(init=False)
    #: The current connection has completed its opening and takes messages.
    accepting: bool = False
    #: The current connection's opening went out. Not ``accepting``: a send that fails on it
    #: later stops the accepting, but the greeting or takeover was delivered all the same.
    opening_done: bool = False
    drops: int = 0
    policy_closes: int = 0
    ended: End | None = None
    _dialling: _Dialling | None = None
    #: Why the current connection was dialled.
    _purpose: Purpose = "first"
    _opened_at: float = 0.0
    _next_index: int = 1
    _since: _Flags = field(default_factory=_Flags)
    _model_busy: bool = False
    _last_voice_at: float = -1e9
    _goaway_deadline: float | None = None
    _goaway_pending: bool = False
    _boundary_at: float | None = None
    _force_fresh: bool = False
    #: Called before any method reads or changes the journal, the message numbering or the
    #: caller's voice time: the bridge's compiled lane (``gateway/call/lane.py``) hands over
    #: there the frames it sent since (:meth:`absorb_audio`).
    settle_hook: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.journal = Journal(self.policy.replay_limit_ms)

    def settle(self) -> None:
        """Bring in what the lane sent since it last settled (see :attr:`settle_hook`)."""
        hook = self.settle_hook
        if hook is not None:
            hook()

    def absorb_audio(
        self,
        generation: int,
        first: int,
        frames: list[bytes],
        voiced: list[bool],
        last_voice_at: float,
    ) -> None:
        """Caller audio the lane sent on connection ``generation`` as messages ``first``,
        ``first + 1``…, while it took messages (``accepting``, and nothing of this machine
        changed meanwhile: every method settles first): journalled and numbered as
        :meth:`record_audio` would have done frame by frame. ``last_voice_at``: the last of
        them that was voiced (negative: none)."""
        if last_voice_at >= 0:
            self._last_voice_at = last_voice_at
            self._since.caller_voice = True
        self._next_index = first + len(frames)
        self.journal.add_sent_run(frames, voiced, generation, first)

    @property
    def next_index(self) -> int:
        """The index the next message on the current connection gets."""
        return self._next_index

    # ------------------------------------------------------------------ dialling

    def start(self) -> Dial:
        """The call's first connection: a fresh session."""
        self.settle()
        assert self.phase == "idle", self.phase
        return self._dial("first", None)

    def handoff(self) -> Dial:
        """The bridge moves the call to another agent: resume the newest handle."""
        self.settle()
        self._check_live()
        return self._dial("handoff", self.handle)

    def dial_failed(self, code: int | None, *, permanent: bool) -> Dial | End:
        """The dial could not open a connection (refused at the upgrade or at setup)."""
        self.settle()
        dialling = self._dialling
        assert dialling is not None and self.phase == "connecting"
        if code in POLICY_CLOSE_CODES:
            if dialling.handle is not None:
                # The handle was refused: go on with a fresh session, reseeded by the opening.
                self.handle = None
                return self._redial(dialling, handle=None, attempt=1)
            # A fresh setup refused: a bad key, model or config. Retrying cannot help.
            return self._end("the Live API refused the setup", code)
        if permanent:
            return self._end("the Live API refused the connection", code)
        if dialling.attempt >= self.policy.max_dial_attempts:
            return self._end(f"could not connect after {dialling.attempt} attempts", code)
        return self._redial(dialling, handle=dialling.handle, attempt=dialling.attempt + 1)

    def opened(self, *, resumed: bool, now: float) -> Opening:
        """The dialled connection completed its setup: what to send first."""
        self.settle()
        dialling = self._dialling
        assert dialling is not None and self.phase == "connecting"
        self._dialling = None
        self.phase = "open"
        self._purpose = dialling.purpose
        self._opened_at = now
        self.opening_done = False
        self._next_index = 1  # 0 was the setup message
        self._stop()  # a fresh connection: no goAway of an earlier one applies
        self._model_busy = False
        since = self._since
        self._since = _Flags()
        purpose = dialling.purpose
        if purpose == "first":
            return self._opening("first")
        if purpose == "handoff":
            # The takeover turns carry what was said since the handle (from the transcript).
            return self._opening("handoff")
        faithful = not (self.journal.overflowed or since.model_output)
        if not resumed:
            # A fresh session: the transcript up to the handle, then the journal (nothing
            # lost); or, when the journal will not do, the whole transcript.
            return self._replaying("reseed") if faithful else self._opening("reseed")
        if not faithful:
            cut_off = since.model_output and not since.model_done
            return self._opening("recap", cut_off=cut_off)
        return self._replaying("replay")

    def opening_sent(self) -> None:
        """The opening went out: the connection now takes the caller's audio directly."""
        self.settle()
        if self.phase == "open":
            self.accepting = True
            self.opening_done = True

    # ------------------------------------------------------------------ sending

    def record(self, entry: Sent, *, now: float) -> int | None:
        """``entry`` is about to be sent (returns its message index on the current
        connection) or queued (None) when no connection takes messages."""
        self.settle()
        if entry.voiced:
            self._last_voice_at = now
            self._since.caller_voice = True
        if self.phase == "ended":
            return None
        index: int | None = None
        if self.accepting:
            index = self._next_index
            self._next_index += 1
            entry.carried_by = (self.generation, index)
        self.journal.add(entry)
        return index

    def record_audio(self, pcm: bytes, voiced: bool, *, now: float) -> int | None:
        """:meth:`record` of ``Sent("audio", pcm=pcm, voiced=voiced)``, for caller audio
        about to be sent on the current connection, fifty times a second per call: no entry
        is made for it (:meth:`Journal.add_sent_audio`). :meth:`unsend_last` if the write
        then fails."""
        self.settle()
        if voiced:
            self._last_voice_at = now
            self._since.caller_voice = True
        if self.phase == "ended":
            return None
        if not self.accepting:
            self.journal.add(Sent("audio", pcm=pcm, voiced=voiced))
            return None
        index = self._next_index
        self._next_index = index + 1
        self.journal.add_sent_audio(pcm, voiced, self.generation, index)
        return index

    def unsend_last(self) -> None:
        """The message :meth:`record_audio` numbered last could not be written: nobody heard
        it, so it is queued for the next connection like audio sent while none took it."""
        self.settle()
        self.journal.unsend_last()

    def resend(self, entry: Sent) -> int:
        """``entry``, from a replay, is being sent again on the current connection."""
        self.settle()
        self._carry(entry)
        self.journal.add(entry)
        return entry.carried_by[1]  # type: ignore[index]

    def deliver(self, entry: Sent) -> int:
        """``entry``, queued in the journal meanwhile, is being sent on the current connection."""
        self.settle()
        self._carry(entry)
        return entry.carried_by[1]  # type: ignore[index]

    def _carry(self, entry: Sent) -> None:
        entry.carried_by = (self.generation, self._next_index)
        self._next_index += 1

    def send_failed(self, generation: int) -> None:
        """A send on connection ``generation`` raised: it is gone. Nothing more goes out on it;
        the driver reports the loss as :meth:`closed`, from the consumer's side."""
        self.settle()
        if self.is_current(generation):
            self.accepting = False

    # ------------------------------------------------------------------ receiving

    def is_current(self, generation: int) -> bool:
        return generation == self.generation and self.phase != "ended"

    def model_output(self, generation: int) -> None:
        """Model audio, transcription of it, or a tool call arrived. (No settle: nothing
        here is what the lane changes, and this comes with every model message.)"""
        if self.is_current(generation):
            self._since.model_output = True
            self._since.model_done = False
            self._model_busy = True
            self._boundary_at = None

    def turn_boundary(self, generation: int, *, now: float) -> Recover | None:
        """turnComplete or interrupted: the model is idle again."""
        self.settle()
        if not self.is_current(generation):
            return None
        self._since.model_done = True
        self._model_busy = False
        if self._goaway_pending:
            self._boundary_at = now
        return self._maybe_move(now)

    def handle_updated(
        self, generation: int, handle: str, *, consumed_index: int | None, now: float
    ) -> Recover | None:
        """A resumable ``sessionResumptionUpdate`` with a new handle."""
        self.settle()
        if not self.is_current(generation):
            return None
        self.handle = handle
        self._since = _Flags(model_done=not self._model_busy)
        self.journal.forget_sent(None if consumed_index is None else (generation, consumed_index))
        return self._maybe_move(now)

    def go_away(self, generation: int, time_left_s: float | None, *, now: float) -> Recover | None:
        self.settle()
        if not self.is_current(generation) or self.phase != "open":
            return None
        seconds = self.policy.goaway_default_s if time_left_s is None else time_left_s
        self._goaway_deadline = now + max(0.0, seconds - self.policy.goaway_margin_s)
        self._goaway_pending = True
        if not self._model_busy:
            self._boundary_at = now  # idle already: the next quiet moment is as good as any
        return self._maybe_move(now, handle_required=True)

    def closed(
        self, generation: int, code: int | None, reason: str, *, now: float
    ) -> Recover | End | None:
        """Connection ``generation`` is gone (closed by the server, lost, or a send failed)."""
        self.settle()
        if not self.is_current(generation) or self.phase != "open":
            return None  # replaced already, or the dial in progress will report on its own
        detail = f"{code}: {reason}" if code is not None else reason
        stable = now - self._opened_at > self.policy.stable_after_s
        if stable:
            self.drops = 0
            self.policy_closes = 0
        self.drops += 1
        if self.drops > self.policy.max_drops:
            return self._end(f"dropped ({detail}); the connection keeps dropping", code)
        if code in POLICY_CLOSE_CODES:
            self.policy_closes += 1
            if self.policy_closes > 2:
                return self._end(f"dropped ({detail}) again after a fresh session", code)
            if self.policy_closes == 2:
                self.handle = None  # the resume did not help: a fresh session, reseeded
        if not self.opening_done and self._purpose in ("first", "handoff"):
            # Lost before its opening went out: the next connection must still greet the
            # caller or take the call over, so it is dialled for the same purpose. (Once it
            # went out, a loss is a drop, even when a write failed before the close was read:
            # the greeting again, or the audio since the handle lost, is what the caller
            # would notice.)
            dial = self._dial(self._purpose, self.handle)
            return Recover("dropped", detail, dial)
        return self._recover("dropped", detail)

    def tick(self, now: float) -> Recover | None:
        """Time passed: a goAway deadline or the grace after a turn boundary may be due."""
        self.settle()
        if self.phase != "open" or not self._goaway_pending:
            return None
        if self._goaway_deadline is not None and now >= self._goaway_deadline:
            return self._recover("goaway", "deadline")
        return self._maybe_move(now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next (None: no timer is running)."""
        if self.phase != "open" or not self._goaway_pending:
            return None  # (the lane changes neither: no settle before, on every event)
        self.settle()
        times = [t for t in (self._goaway_deadline,) if t is not None]
        if self._boundary_at is not None and not self._model_busy:
            quiet_at = self._last_voice_at + self.policy.voice_hangover_s
            times.append(max(self._boundary_at + self.policy.boundary_grace_s, quiet_at))
        return min(times) if times else None

    def close(self) -> None:
        """The call is over: nothing more is dialled or queued."""
        self.settle()
        if self.phase != "ended":
            self._end("closed", None)
        self.journal.clear()

    # ------------------------------------------------------------------ internals

    def _caller_speaking(self, now: float) -> bool:
        return now - self._last_voice_at < self.policy.voice_hangover_s

    def _maybe_move(self, now: float, *, handle_required: bool = False) -> Recover | None:
        """With a goAway pending, move now if this is a good moment."""
        if not self._goaway_pending or self.phase != "open":
            return None
        if self._model_busy or self._caller_speaking(now):
            return None
        current = self.handle is not None and not (
            self._since.caller_voice or self._since.model_output
        )
        if current:
            return self._recover("goaway", "handle current, model idle")
        if handle_required:
            return None
        due = self._boundary_at is not None and now >= self._boundary_at + (
            self.policy.boundary_grace_s
        )
        if due:
            return self._recover("goaway", "turn boundary")
        return None

    def _recover(self, reason: Literal["goaway", "dropped"], detail: str) -> Recover:
        dial = self._dial(reason, self.handle)
        return Recover(reason, detail, dial)

    def _dial(self, purpose: Purpose, handle: str | None) -> Dial:
        self.phase = "connecting"
        self._stop()
        self.generation += 1
        self._dialling = _Dialling(purpose, handle)
        return Dial(self.generation, handle, purpose)

    def _redial(self, dialling: _Dialling, *, handle: str | None, attempt: int) -> Dial:
        backoff = self.policy.retry_backoff_s or (0.0,)
        delay = backoff[min(attempt - 1, len(backoff) - 1)]
        self.generation += 1
        self._dialling = _Dialling(dialling.purpose, handle, attempt)
        return Dial(self.generation, handle, dialling.purpose, delay)

    def _replaying(self, kind: OpeningKind) -> Opening:
        entries = tuple(self.journal.entries)
        self.journal.clear()  # each entry is journalled again as it is sent on this connection
        for entry in entries:
            entry.carried_by = None
        return Opening(kind, replay=entries)

    def _opening(self, kind: OpeningKind, *, cut_off: bool = False) -> Opening:
        # What was sent since the handle is now covered by the opening (greeting, takeover
        # note, recap or reseed, from the transcript); what was never sent still follows it.
        self.journal.forget_sent()
        return Opening(kind, cut_off=cut_off)

    def _end(self, reason: str, code: int | None) -> End:
        self.phase = "ended"
        self._stop()
        self._dialling = None
        self.ended = End(reason, code)
        return self.ended

    def _stop(self) -> None:
        """The current connection takes nothing more, and its goAway timers are void."""
        self.accepting = False
        self._goaway_deadline = None
        self._goaway_pending = False
        self._boundary_at = None

    def _check_live(self) -> None:
        if self.phase in ("idle", "ended"):
            raise RuntimeError(f"the session is {self.phase}")
