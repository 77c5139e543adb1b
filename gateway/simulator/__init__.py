"""Local Gemini Live simulator: a TLS websocket server speaking the BidiGenerateContent protocol.

Importing this package is cheap; the names below are loaded on first use::

    from gateway.simulator import LiveSimulator, Script, Step, load_script, generate_tls
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.simulator.live_server import LiveSimulator
    from gateway.simulator.script import Script, Step, load_script
    from gateway.simulator.tls import TlsMaterial, generate_tls

__all__ = ["LiveSimulator", "Script", "Step", "TlsMaterial", "generate_tls", "load_script"]

_HOMES = {
    "LiveSimulator": "gateway.simulator.live_server",
    "Script": "gateway.simulator.script",
    "Step": "gateway.simulator.script",
    "load_script": "gateway.simulator.script",
    "TlsMaterial": "gateway.simulator.tls",
    "generate_tls": "gateway.simulator.tls",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gateway.simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
