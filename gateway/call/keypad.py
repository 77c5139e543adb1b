"""Keypresses gathered into entries, the way a person types a number on a phone.

A caller typing an order number presses several keys in a row; handing each key to the model as
its own turn would make it answer after every digit. Keys are collected into one *entry* that
ends when the caller presses ``#`` (the usual "finish" key of phone menus) or stops pressing for
the inter-digit time (``DTMF_INTERDIGIT_MS``), and the entry reaches the model as one text turn.

Pure: the bridge feeds it keys and the clock, and asks it when the next entry is due.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The key that ends an entry at once.
FINISH_KEY = "#"
#: Keys in one entry at most: a caller leaning on the keypad must not grow a turn without bound.
MAX_KEYS = 64


class Keypad:
    """Collects keys into entries; one per call."""

    __slots__ = ("_deadline", "_interdigit_s", "_keys")

    def __init__(self, interdigit_s: float) -> None:
        self._interdigit_s = interdigit_s
        self._keys: list[str] = []
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the entry being typed ends unless another key comes (None: nothing typed)."""
        return self._deadline

    def press(self, key: str, now: float) -> tuple[str, ...] | None:
        """Add ``key``; the finished entry if it ended the entry (``#``, or the size cap)."""
        self._keys.append(key)
        if key == FINISH_KEY or len(self._keys) >= MAX_KEYS:
            return self._take()
        self._deadline = now + self._interdigit_s
        return None

    def due(self, now: float) -> tuple[str, ...] | None:
        """The entry, if the caller has stopped typing for the inter-digit time."""
        if self._deadline is None or now < self._deadline:
            return None
        return self._take()

    def _take(self) -> tuple[str, ...]:
        keys = tuple(self._keys)
        self._keys.clear()
        self._deadline = None
        return keys


def entry_text(keys: Sequence[str]) -> str:
    """The text turn an entry becomes: the keys in order, spaced so each is read as a key."""
    return f"The caller pressed {' '.join(keys)} on the phone keypad."
