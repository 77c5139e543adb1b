"""The TwiML/TeXML both carriers answer webhooks with (gateway/carriers/markup.py), as strings:
exact bytes where the carriers' parsers see them, and escaping of everything a caller or an
operator can put in."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.carriers.markup import (
    XML_DECLARATION,
    connect_stream,
    dial_document,
    dial_verb,
    fallback_verbs,
    parameter_tags,
    response_document,
    say_and_hang_up,
)

# XML 1.0 cannot carry most control characters at all, escaped or not.
_XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r").filter(
        lambda c: c >= " " or c in "\t\n"
    ),
    max_size=40,
)


def test_a_document_is_the_declaration_and_a_response() -> None:
    assert XML_DECLARATION == '<?xml version="1.0" encoding="UTF-8"?>'
    assert response_document("<Hangup/>") == XML_DECLARATION + "<Response><Hangup/></Response>"
    assert response_document("") == XML_DECLARATION + "<Response></Response>"


def test_connect_stream_exact_bytes() -> None:
    """quoteattr picks single quotes for a value holding a double quote (and no single one)."""
    xml = connect_stream(
        "wss://gw/s", {"a": "1", "b": 'x"<&'}, "<Hangup/>", {"track": "inbound_track", "n": "2"}
    )
    assert xml == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://gw/s" track="inbound_track" n="2">'
        '<Parameter name="a" value="1"/><Parameter name="b" value=\'x"&lt;&amp;\'/>'
        "</Stream></Connect><Hangup/></Response>"
    )
    assert connect_stream("wss://gw/s", {}) == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Response><Connect><Stream url="wss://gw/s"></Stream></Connect></Response>'
    )


@given(
    url=_XML_TEXT,
    parameters=st.dictionaries(_XML_TEXT, _XML_TEXT, max_size=4),
    attributes=st.dictionaries(st.sampled_from(["track", "codec", "x"]), _XML_TEXT, max_size=3),
)
def test_connect_stream_round_trips_whatever_it_is_given(
    url: str, parameters: dict[str, str], attributes: dict[str, str]
) -> None:
    root = ET.fromstring(connect_stream(url, parameters, "", attributes))
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib == {"url": url, **attributes}
    assert [(p.attrib["name"], p.attrib["value"]) for p in stream] == list(parameters.items())


def test_parameter_tags_keep_order_and_escape() -> None:
    assert parameter_tags({}) == ""
    assert parameter_tags({"z": "1", "a": "<'>"}) == (
        '<Parameter name="z" value="1"/><Parameter name="a" value="&lt;\'&gt;"/>'
    )


@pytest.mark.parametrize(
    ("say", "transfer_to", "verbs"),
    [
        ("Sorry", "sip:agent@pbx.example.com", "<Dial><Sip>sip:agent@pbx.example.com</Sip></Dial>"),
        ("Sorry", "sips:a@b;x=1&y", "<Dial><Sip>sips:a@b;x=1&amp;y</Sip></Dial>"),
        ("Sorry", "+15550001111", "<Dial>+15550001111</Dial>"),
        ("Sorry <all> lines & busy", "", "<Say>Sorry &lt;all&gt; lines &amp; busy</Say><Hangup/>"),
        ("", "", "<Hangup/>"),
    ],
)  # fmt: skip
def test_fallback_verbs_dial_else_say_and_hang_up(say: str, transfer_to: str, verbs: str) -> None:
    assert fallback_verbs(say, transfer_to) == verbs
    ET.fromstring(response_document(verbs))  # well-formed


def test_say_and_hang_up_escapes() -> None:
    root = ET.fromstring(say_and_hang_up("Sorry <all> lines & busy"))
    assert root.find("Say") is not None
    assert root.find("Say").text == "Sorry <all> lines & busy"  # type: ignore[union-attr]
    assert root.find("Hangup") is not None
    assert say_and_hang_up("") == XML_DECLARATION + "<Response><Hangup/></Response>"


@pytest.mark.parametrize(
    ("destination", "verbs"),
    [
        ("+15551234567", "<Dial>+15551234567</Dial>"),
        ("sip:desk@pbx.example.com", "<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial>"),
        ("sips:desk@pbx.example.com", "<Dial><Sip>sips:desk@pbx.example.com</Sip></Dial>"),
        ("sip:a@b?x=1&y=<2>", "<Dial><Sip>sip:a@b?x=1&amp;y=&lt;2&gt;</Sip></Dial>"),
    ],
)
def test_dial_document_exact_bytes(destination: str, verbs: str) -> None:
    assert dial_document(destination) == XML_DECLARATION + "<Response>" + verbs + "</Response>"
    assert dial_verb(destination) == verbs
    assert fallback_verbs("ignored when transferring", destination) == verbs
