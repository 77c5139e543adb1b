"""Callsim: local peers that speak the real wire protocols the gateway talks to.

- ``callsim.live``: a Gemini Live server (TLS websocket, BidiGenerateContent) that the real
  google-genai SDK connects to through its ``base_url``; scripted turns, tool calls, faults.
- ``callsim.twilio`` and ``callsim.telnyx``: each carrier's side of the protocol, written from
  the carriers' documentation (not from ``gateway/carriers``), so they check the gateway: the
  messages a carrier sends, the rules it holds the gateway's messages to, its webhooks and API.
- ``callsim.callers``: simulated callers that place a whole call through those peers.
- ``callsim.demo`` and ``callsim.commands``: ``gateway demo``, ``gateway call``,
  ``gateway simulator``.

The gateway never imports this package at module level; only the commands that run a simulator
(and ``serve --simulator``) load it. Importing the package itself is cheap; the names below are
loaded on first use::

    from callsim import LiveSimulator, Script, Step, load_script, generate_tls
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callsim.live.script import Script, Step, load_script
    from callsim.live.server import LiveSimulator
    from callsim.tls import TlsMaterial, generate_tls

__all__ = ["LiveSimulator", "Script", "Step", "TlsMaterial", "generate_tls", "load_script"]

_HOMES = {
    "LiveSimulator": "callsim.live.server",
    "Script": "callsim.live.script",
    "Step": "callsim.live.script",
    "load_script": "callsim.live.script",
    "TlsMaterial": "callsim.tls",
    "generate_tls": "callsim.tls",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'callsim' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
