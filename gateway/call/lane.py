"""The caller's frames in one C call each: the media lane compiled.

Fifty times a second per call a caller frame goes from the carrier's socket to the model's. The
bridge's own path for it (:meth:`CallBridge._take_media`) is a dozen Python calls over as many
objects: the gate (the caller loop waiting, the model's socket writable), the carrier's quick
parse, the real-time budget, the call's counters and last activity, the uplink's transcoding
step, the idle watch, the session's journal and message numbering, and the frame built and
written. Each piece is cheap; together, with each object cold again 20 ms later after the other
calls have passed through the caches, they were a tenth of the gateway's CPU at 50 calls
(benchmarks/README.md, "What is left, measured again (tenth pass)" and "The native lane").

:class:`~gateway._mediaplane.CallerLane` does that path over one C struct per call. It takes a
frame only when the bridge's path would take it the same way, and hands anything else to that
path untouched (``fallback``): a message of another shape, a frame ahead of real time, a model
socket that cannot take it at once, a call being recorded or holding its audio for a handoff, a
provider it does not write for. What it changed stays in the struct, *pending*, until it
settles: it hands the frames and counts to their owners (the bridge's ``bridge_sink``, the
session machine's :meth:`~gateway.live.machine.SessionMachine.absorb_audio`) and asks
``reload()`` for their state before its next frame. Everything that reads or changes that
state settles it first: every method of the session machine (its ``settle_hook``), the
bridge's own path, its watchdog, a handoff, the end of the call. So Python sees exactly what
the bridge's path would have left, and the journal a resume replays is the same, frame for
frame (tests/test_caller_lane.py drives both paths with the same frames).

Without the compiled module (an install without a C compiler) there is no lane, and every frame
takes the bridge's path, as before.
"""

from __future__ import annotations

from gateway.mediaplane import COMPILED

if COMPILED:
    from gateway._mediaplane import CallerLane
else:  # pragma: no cover -- built without a C compiler
    CallerLane = None  # type: ignore[assignment,misc]

#: Whether calls can have a lane (False: the extension was not built).
AVAILABLE = CallerLane is not None

__all__ = ["AVAILABLE", "CallerLane"]
