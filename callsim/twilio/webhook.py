"""Twilio's side of the voice webhook, as pure functions (no I/O).

Twilio answers an inbound call by POSTing a form to the gateway's Voice URL, signed with
``X-Twilio-Signature``, and runs the TwiML it gets back. The caller simulator builds that form and
signature here, and checks the answer as Twilio would: HTTP status, Content-Type, well-formed
TwiML with exactly one ``<Connect><Stream>``, the stream URL (``wss`` only, no query string) and
each ``<Parameter>``. Problems are violation strings (see :mod:`callsim.twilio.peer`);
things that are legitimate but worth knowing (a ``ws://`` URL on a local gateway, verbs the
simulator does not play) are warnings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from callsim.twilio.peer import Violation, format_violation

__all__ = [
    "PARAMETER_LIMIT",
    "TwimlStream",
    "check_twiml",
    "document_verbs",
    "resolve_stream_url",
    "twilio_signature",
    "update_verbs",
    "verbs_after_connect",
    "webhook_form",
]

PARAMETER_LIMIT = 500
"""A ``<Parameter>``'s name and value together must be *under* 500 characters."""


def webhook_form(
    *,
    call_sid: str,
    account_sid: str,
    from_number: str,
    to_number: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The form Twilio POSTs to the Voice URL for a new inbound call (``extra`` may override)."""
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "CalledCountry": "US",
        "Caller": from_number,
        "CallerCountry": "US",
        "Direction": "inbound",
        "From": from_number,
        "FromCountry": "US",
        "To": to_number,
        "ToCountry": "US",
    }
    form.update(extra or {})
    return form


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 over the URL then each sorted ``name + value``.

    WebSocket upgrades are signed over the ``wss://`` URL with no params.
    """
    data = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass
class TwimlStream:
    """What the webhook answer tells Twilio to do, and everything wrong with it.

    ``url`` is the WebSocket URL to connect to, or ``None`` when the answer gives Twilio no
    usable two-way stream (the call would fail).
    """

    url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


_STREAM_ATTRIBUTES = frozenset({"url", "name", "track", "statusCallback", "statusCallbackMethod"})


def check_twiml(
    *, status: int, content_type: str | None, body: bytes, webhook_url: str, require_wss: bool
) -> TwimlStream:
    """Validate a webhook answer as Twilio would and extract the ``<Connect><Stream>``.

    Problems that still leave a usable stream URL (wrong Content-Type, ``ws://``, a query string)
    are recorded and the URL is returned anyway, so the rest of the call can be exercised too.
    """
    out = TwimlStream()
    if status != 200:
        out.violations.append(
            format_violation(Violation.WEBHOOK_STATUS, f"HTTP {status}, expected 200 (11200)")
        )
        return out
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in ("text/xml", "application/xml"):
        out.violations.append(
            format_violation(
                Violation.WEBHOOK_CONTENT_TYPE,
                f"Content-Type {content_type!r}, expected text/xml or application/xml (12300)",
            )
        )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        out.violations.append(
            format_violation(Violation.TWIML_INVALID, f"not well-formed XML: {exc} (12100)")
        )
        return out
    if root.tag != "Response":
        out.violations.append(
            format_violation(
                Violation.TWIML_INVALID, f"root element is <{root.tag}>, expected <Response>"
            )
        )
        return out
    stream = _find_stream(root, out)
    if stream is not None:
        _check_stream(stream, out)
        raw_url = stream.get("url")
        if not raw_url:
            out.violations.append(
                format_violation(Violation.STREAM_URL_MALFORMED, "<Stream> has no url (31923)")
            )
        else:
            out.url, violations, warnings = resolve_stream_url(
                raw_url, webhook_url=webhook_url, require_wss=require_wss
            )
            out.violations += violations
            out.warnings += warnings
    return out


def _find_stream(root: ET.Element, out: TwimlStream) -> ET.Element | None:
    verbs = [child.tag for child in root]
    connects = root.findall("Connect")
    if not connects:
        hint = (
            " (<Start><Stream> is one-way: the gateway could not speak)" if "Start" in verbs else ""
        )
        out.violations.append(
            format_violation(
                Violation.TWIML_NO_STREAM, f"no <Connect> in <Response>: {verbs}{hint}"
            )
        )
        return None
    before = verbs[: verbs.index("Connect")]
    if before:
        out.warnings.append(f"verbs before <Connect> are not simulated: {before}")
    streams = connects[0].findall("Stream")
    if not streams:
        nouns = [child.tag for child in connects[0]]
        out.violations.append(
            format_violation(Violation.TWIML_NO_STREAM, f"<Connect> holds {nouns}, no <Stream>")
        )
        return None
    if len(streams) > 1:
        out.violations.append(
            format_violation(
                Violation.TWIML_MULTIPLE_STREAMS,
                f"{len(streams)} <Stream> in <Connect>; a call has one bidirectional stream",
            )
        )
    return streams[0]


def _check_stream(stream: ET.Element, out: TwimlStream) -> None:
    unknown = sorted(set(stream.attrib) - _STREAM_ATTRIBUTES)
    if unknown:
        out.warnings.append(f"unknown <Stream> attributes ignored by Twilio: {unknown}")
    track = stream.get("track")
    if track is not None and track != "inbound_track":
        out.violations.append(
            format_violation(
                Violation.TWIML_TRACK,
                f"track={track!r}: <Connect><Stream> only supports inbound_track (31941)",
            )
        )
    for child in stream:
        if child.tag != "Parameter":
            out.warnings.append(f"unexpected <{child.tag}> inside <Stream>")
            continue
        name, value = child.get("name"), child.get("value")
        if name is None or value is None:
            out.violations.append(
                format_violation(
                    Violation.PARAMETER_INVALID, f"<Parameter> needs name and value: {child.attrib}"
                )
            )
            continue
        if len(name) + len(value) >= PARAMETER_LIMIT:
            out.violations.append(
                format_violation(
                    Violation.PARAMETER_TOO_LONG,
                    f"<Parameter name={name[:40]!r}>: name+value is {len(name) + len(value)} "
                    f"chars, must be under {PARAMETER_LIMIT}",
                )
            )
        if name in out.parameters:
            out.warnings.append(f"<Parameter name={name!r}> given twice; the last one wins")
        out.parameters[name] = value


def resolve_stream_url(
    raw_url: str, *, webhook_url: str, require_wss: bool
) -> tuple[str | None, list[str], list[str]]:
    """Check a ``<Stream url>``; return ``(url to connect to or None, violations, warnings)``."""
    violations: list[str] = []
    warnings: list[str] = []
    url = raw_url.strip()
    parts = urlsplit(url)
    if not parts.scheme:
        base = urlsplit(webhook_url)
        ws_scheme = {"https": "wss", "http": "ws"}.get(base.scheme, base.scheme)
        url = urljoin(base._replace(scheme=ws_scheme).geturl(), url)
        warnings.append(f"relative <Stream url={raw_url!r}> resolved to {url!r}")
        parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        violations.append(
            format_violation(
                Violation.STREAM_URL_SCHEME, f"{raw_url!r}: scheme must be wss (31922)"
            )
        )
        return None, violations, warnings
    if parts.scheme == "ws":
        text = f"{raw_url!r}: scheme is ws://; Twilio only connects to wss:// (31922)"
        if require_wss:
            violations.append(format_violation(Violation.STREAM_URL_SCHEME, text))
        else:
            warnings.append(text)
    if not parts.hostname:
        violations.append(
            format_violation(Violation.STREAM_URL_MALFORMED, f"{raw_url!r}: no host (31923)")
        )
        return None, violations, warnings
    if parts.query:
        violations.append(
            format_violation(
                Violation.STREAM_URL_QUERY,
                f"{raw_url!r}: Twilio does not support a query string in <Stream url>; "
                "use <Parameter> instead",
            )
        )
    if parts.fragment:
        violations.append(
            format_violation(
                Violation.STREAM_URL_MALFORMED, f"{raw_url!r}: URL has a fragment (31923)"
            )
        )
    return url, violations, warnings


def document_verbs(markup: str | bytes) -> list[str]:
    """The verbs a ``<Response>`` document runs, as the caller records them in
    ``CallResult.after_stream``: ``Hangup``, ``Say:<text>``, ``Dial:<number>``, ``Sip:<uri>``,
    else the verb's tag. TeXML has the same verbs, so the Telnyx caller reads it here too.
    Raises ``ValueError`` for a document that is not XML with a ``<Response>`` root."""
    try:
        root = ET.fromstring(markup)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, expected <Response>")
    return [item for verb in root for item in _verb(verb)]


def verbs_after_connect(markup: str | bytes) -> list[str]:
    """The verbs after the first ``</Connect>`` of a webhook answer: what the carrier runs once
    the gateway closes the ``<Connect><Stream>`` (nothing if the answer is not a document)."""
    try:
        root = ET.fromstring(markup)
    except ET.ParseError:
        return []
    verbs = list(root)
    tags = [verb.tag for verb in verbs]
    if "Connect" not in tags:
        return []
    return [item for verb in verbs[tags.index("Connect") + 1 :] for item in _verb(verb)]


def _verb(verb: ET.Element) -> list[str]:
    text = (verb.text or "").strip()
    if verb.tag == "Say":
        return [f"Say:{text}"]
    if verb.tag != "Dial":
        return [verb.tag]
    targets = [f"Dial:{text}"] if text else []
    for noun in verb:
        value = (noun.text or "").strip()
        targets.append(f"Sip:{value}" if noun.tag == "Sip" else f"Dial:{value}")
    return targets or ["Dial:"]


def update_verbs(form: Mapping[str, str], markup_key: str = "Twiml") -> list[str]:
    """What a REST update of a live call runs: the verbs of its new document (``Twiml`` on
    Twilio, ``Texml`` on Telnyx), else ``Hangup`` for ``Status=completed``.

    Raises ``ValueError`` for an update the carrier refuses (no document, Url or Status; a
    document that is not a ``<Response>``).
    """
    if markup_key in form:
        return document_verbs(form[markup_key])
    if form.get("Status") in ("completed", "canceled"):
        return ["Hangup"]
    if "Url" in form:
        return [f"Redirect:{form['Url']}"]
    raise ValueError(f"an update needs {markup_key}, Url or Status")
