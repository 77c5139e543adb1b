"""One stream per call across the workers of one ``gateway serve``: claims in a shared directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.security import StreamGrant


class SharedStreamLedger:
    """``gateway.security.StreamLedger`` for the workers of one ``gateway serve``: which calls
    have had their stream, in a directory they share.

    The workers accept on one socket, so a call's webhook answered by one worker and its
    stream served by another is the normal case, and a replayed token may reach any of them:
    "one stream per call" must hold across them. A claim is a file named by a hash of (carrier,
    call id), created with ``O_CREAT | O_EXCL``, which the kernel lets exactly one process do:
    no lock, no server, and a worker that dies mid-claim leaves nothing half done.
    ``streamed`` asks whether the file exists, ``release`` removes it. The file's modification
    time is the claim's; the master removes claims older than the retention once a minute
    (:func:`prune_claims`): a single pruner, so no prune can remove a claim made since it
    looked. The directory is on a memory file system (``/dev/shm``) when there is one: a claim
    costs a few microseconds on the event loop.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def claim(self, grant: StreamGrant, now: float) -> bool:
        """Record the call's stream; False if it already had one (in any worker)."""
        path = self._path(grant.carrier, grant.call_id)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        try:
            os.utime(fd, (now, now))
        finally:
            os.close(fd)
        return True

    def release(self, grant: StreamGrant) -> None:
        """Undo a claim whose stream was passed on to another replica, unopened."""
        with contextlib.suppress(FileNotFoundError):
            self._path(grant.carrier, grant.call_id).unlink()

    def streamed(self, carrier: str, call_id: str, now: float) -> bool:
        """Whether this call has had its stream (a webhook for it now is a replay)."""
        return self._path(carrier, call_id).exists()

    def _path(self, carrier: str, call_id: str) -> Path:
        # Hashed: a call id is the carrier's text, and must not become a path.
        digest = hashlib.sha256(f"{carrier}\0{call_id}".encode()).hexdigest()
        return self.directory / digest


def prune_claims(directory: Path, before: float) -> int:
    """Remove the claims in ``directory`` made before ``before`` (Unix seconds); returns how
    many. Only the master calls it (see :class:`SharedStreamLedger`)."""
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < before:
                    os.unlink(entry.path)
                    removed += 1
    return removed
