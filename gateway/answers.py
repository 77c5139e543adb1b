"""What a gateway's error answer says, for its clients (``gateway dial``, the simulators).

FastAPI answers an error with ``{"detail": "<reason>"}``; a proxy in front may answer with
plain text or HTML instead. Either way a client shows one line, never a JSON dump.
"""

from __future__ import annotations

import httpx


def error_detail(response: httpx.Response) -> str:
    """The ``detail`` of a gateway error answer, else the start of its text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200].strip() or response.reason_phrase
