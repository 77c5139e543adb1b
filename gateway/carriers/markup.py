"""TwiML and TeXML, the XML a carrier's voice webhook is answered with, as plain strings.

Telnyx's TeXML is Twilio's TwiML under another name: the same ``<Response>`` document, the
same ``<Connect><Stream>`` with ``<Parameter>`` children, the same verbs for a call the gateway
cannot continue. That common part lives here; each carrier's module keeps only what is its own,
the checks and attributes of its ``<Stream>`` (Twilio's parameter size and query-string rules,
Telnyx's codec and bidirectional attributes).

Strings rather than an XML library: the documents are small and fixed in shape, and every
value is escaped where it is written (``quoteattr`` for attributes, ``escape`` for text).
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape, quoteattr

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def response_document(verbs: str) -> str:
    """A whole document: ``verbs`` (already markup) inside ``<Response>``."""
    return XML_DECLARATION + "<Response>" + verbs + "</Response>"


def connect_stream(
    url: str,
    parameters: Mapping[str, str],
    after: str = "",
    attributes: Mapping[str, str] | None = None,
) -> str:
    """A document handing the call's audio to the websocket at ``url``, both ways.

    ``<Connect>`` (not ``<Start>``) makes the stream bidirectional and holds the call for as long
    as the websocket is open. The verbs in ``after`` run only when the *gateway* closes the
    socket (a caller who hangs up has ended the call already): that is where the fallback goes,
    so a gateway that has to give up on a call still says something instead of dead air.
    ``parameters`` arrive in the stream's ``start`` message; ``attributes`` follow ``url`` on
    ``<Stream>``, in their order.
    """
    extra = "".join(f" {name}={quoteattr(value)}" for name, value in (attributes or {}).items())
    stream = f"<Connect><Stream url={quoteattr(url)}{extra}>{parameter_tags(parameters)}"
    return response_document(stream + "</Stream></Connect>" + after)


def parameter_tags(parameters: Mapping[str, str]) -> str:
    """``<Parameter name=… value=…/>`` for each item, in order."""
    return "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>"
        for name, value in parameters.items()
    )


def fallback_verbs(say: str, transfer_to: str = "") -> str:
    """Verbs for a call the gateway cannot continue: dial ``transfer_to`` (a number or a
    ``sip:`` URI), or else say ``say`` and hang up."""
    if transfer_to:
        return dial_verb(transfer_to)
    return f"<Say>{escape(say)}</Say><Hangup/>" if say else "<Hangup/>"


def dial_verb(destination: str) -> str:
    """``<Dial>`` to ``destination``: a phone number as the verb's text, a ``sip:``/``sips:``
    URI inside ``<Sip>`` (a bare URI in ``<Dial>`` would be dialled as digits)."""
    if destination.startswith("sip"):
        return f"<Dial><Sip>{escape(destination)}</Sip></Dial>"
    return f"<Dial>{escape(destination)}</Dial>"


def dial_document(destination: str) -> str:
    """A whole document that transfers the call to ``destination`` (see :func:`dial_verb`):
    sent through the REST API it replaces the call's markup, so the stream ends and the
    caller is connected, and the verbs after ``</Connect>`` never run."""
    return response_document(dial_verb(destination))


def say_and_hang_up(message: str) -> str:
    """A polite spoken message and hang-up, for calls the gateway cannot take."""
    return response_document(fallback_verbs(message))
