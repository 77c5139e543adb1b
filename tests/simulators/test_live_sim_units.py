"""Live simulator building blocks without sockets: voices, TLS material, handshake rules, message
parsing and normalisation, server message shapes, audio (tone, VAD, pitch) and scripts."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from callsim.live import handshake, messages
from callsim.live import protocol as proto
from callsim.live.audio import (
    EnergyVad,
    SpeechEnded,
    SpeechStarted,
    split_chunks,
    tone_pcm16,
)
from callsim.live.model import ModelOptions, split_transcript
from callsim.live.script import (
    Script,
    ScriptError,
    Step,
    ToolCallSpec,
    default_step,
    handoff_target,
    load_script,
    role_from_instruction,
)
from callsim.live.voices import DEFAULT_VOICE, VOICES, voice_for_pitch, voice_pitch_hz
from callsim.tls import generate_tls
from gateway.audio import analysis

# --- voices ------------------------------------------------------------------------------------


def test_thirty_voices_have_distinct_pitches_in_range() -> None:
    assert len(VOICES) == 30
    assert DEFAULT_VOICE == "Puck"
    pitches = sorted(voice_pitch_hz(v) for v in VOICES)
    assert pitches[0] >= 200
    assert pitches[-1] <= 900
    assert min(b - a for a, b in itertools.pairwise(pitches)) >= 20


def test_voice_pitch_is_deterministic_case_insensitive_and_invertible() -> None:
    assert voice_pitch_hz("kore") == voice_pitch_hz("Kore")
    for voice in VOICES:
        assert voice_for_pitch(voice_pitch_hz(voice) + 3) == voice


def test_unknown_voice_is_hashed_stably_between_known_pitches() -> None:
    pitch = voice_pitch_hz("NotAVoice")
    assert pitch == voice_pitch_hz("NotAVoice")
    assert 200 <= pitch <= 900
    assert min(abs(pitch - voice_pitch_hz(v)) for v in VOICES) >= 12
    assert voice_for_pitch(pitch) is None


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_material_covers_ip_and_dns_and_trusts_only_its_ca(tmp_path: Path) -> None:
    material = generate_tls(("127.0.0.1", "localhost", "sim.test"))
    leaf = x509.load_pem_x509_certificate(material.cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sim.test"]
    assert isinstance(material.server_context(), ssl.SSLContext)
    client = material.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert len(client.get_ca_certs()) == 1
    assert material.write_ca(tmp_path / "ca.pem").read_bytes() == material.ca_pem
    assert "PRIVATE" not in repr(material)


# --- handshake ---------------------------------------------------------------------------------

LIVE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.mark.parametrize(
    ("target", "version", "method"),
    [
        (LIVE, "v1beta", "BidiGenerateContent"),
        ("/" + LIVE + "?key=k", "v1beta", "BidiGenerateContent"),
        (LIVE.replace("v1beta", "v1"), "v1", "BidiGenerateContent"),
        (
            LIVE.replace("v1beta", "v1alpha") + "Constrained",
            "v1alpha",
            "BidiGenerateContentConstrained",
        ),
    ],
)
def test_live_paths_match(target: str, version: str, method: str) -> None:
    assert handshake.match_path(target) == handshake.Endpoint(version, method)


@pytest.mark.parametrize(
    "target",
    [
        "/",
        LIVE + "/extra",
        LIVE.replace("v1beta", "v2"),
        LIVE.replace("BidiGenerateContent", "GenerateContent"),
        "ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    ],
)
def test_other_paths_do_not_match(target: str) -> None:
    assert handshake.match_path(target) is None


@pytest.mark.parametrize(
    ("target", "headers", "key"),
    [
        (LIVE, {"x-goog-api-key": "h"}, "h"),
        (LIVE + "?key=q", {}, "q"),
        (LIVE + "?access_token=t", {}, "t"),
        (LIVE, {"Authorization": "Token auth_tokens/abc"}, "auth_tokens/abc"),
        (LIVE, {"Authorization": "Bearer x"}, None),
        (LIVE + "?key=", {"x-goog-api-key": " "}, None),
    ],
)
def test_api_key_sources(target: str, headers: dict[str, str], key: str | None) -> None:
    assert handshake.find_api_key(target, headers) == key


# --- client messages ---------------------------------------------------------------------------

SDK_SETUP = {
    "setup": {
        "model": "models/gemini-2.5-flash-native-audio-preview-12-2025",
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": {
                "voice_config": {"prebuilt_voice_config": {"voice_name": "Kore"}},
                "language_code": "en-US",
            },
        },
        "systemInstruction": {"parts": [{"text": "Role: Billing agent"}], "role": "user"},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "parameters": {
                            "properties": {"city_name": {"type": "STRING", "any_of": []}},
                            "type": "OBJECT",
                        },
                    },
                    {"name": "lookup", "parameters_json_schema": {"$defs": {"my_type": {}}}},
                ]
            }
        ],
        "sessionResumption": {"handle": "prev-handle-123"},
        "inputAudioTranscription": {},
        "realtimeInputConfig": {"automatic_activity_detection": {"disabled": True}},
        "labels": {"team_name": "x"},
    }
}


def test_sdk_setup_is_normalised_and_read() -> None:
    setup = proto.parse_setup(proto.parse_frame(json.dumps(SDK_SETUP)))
    assert setup.model.endswith("12-2025")
    assert setup.voice == "Kore"
    assert setup.system_instruction == "Role: Billing agent"
    assert [d["name"] for d in setup.function_declarations] == ["get_weather", "lookup"]
    weather = setup.function_declarations[0]["parameters"]["properties"]["city_name"]
    assert weather == {"type": "STRING", "anyOf": []}  # property name kept, schema normalised
    assert setup.function_declarations[1]["parametersJsonSchema"] == {"$defs": {"my_type": {}}}
    assert setup.normalised["labels"] == {"team_name": "x"}
    assert setup.normalised["generationConfig"]["speechConfig"]["languageCode"] == "en-US"
    assert setup.resumption_requested
    assert setup.handle == "prev-handle-123"
    assert setup.input_transcription
    assert not setup.output_transcription
    assert setup.manual_activity


def test_minimal_setup_defaults() -> None:
    setup = proto.parse_setup({"setup": {"model": "m", "sessionResumption": {}}})
    assert (setup.voice, setup.system_instruction, setup.handle) == ("Puck", "", None)
    assert setup.resumption_requested
    assert not proto.parse_setup({"setup": {"model": "m"}}).resumption_requested


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff\xfe",
        "not json",
        "[1, 2]",
        "{}",
        '{"setup": {}}',
        '{"setup": {"model": ""}}',
        '{"setup": {"model": "m"}, "clientContent": {}}',
        '{"setup": {"model": "m", "systemInstruction": "plain text"}}',
        '{"setup": {"model": "m", "sessionResumption": {"handle": 5}}}',
        '{"realtimeInput": {}}',
        '{"bogus": {}}',
        '{"client_content": {}, "clientContent": {}}',
        "[" * 5000 + "]" * 5000,
    ],
)
def test_bad_first_frames_raise_1007(frame: str | bytes) -> None:
    with pytest.raises(proto.ProtocolError) as caught:
        proto.parse_setup(proto.parse_frame(frame))
    assert caught.value.code == 1007
    assert caught.value.reason


def test_audio_in_both_base64_alphabets_and_media_chunks() -> None:
    pcm = bytes([0xFB, 0xFF, 0x00, 0x01] * 4)  # encodes with '-' and '_' in URL-safe base64
    url_safe = base64.urlsafe_b64encode(pcm).decode()
    assert "-" in url_safe or "_" in url_safe
    events = proto.parse_client_message(
        proto.parse_frame(
            json.dumps(
                {
                    "realtime_input": {
                        "mediaChunks": [{"data": url_safe, "mime_type": "audio/pcm;rate=16000"}],
                        "audio": {"data": base64.b64encode(pcm).decode().rstrip("=")},
                    }
                }
            )
        )
    )
    assert events == [
        proto.AudioIn(pcm=pcm, mime_type="audio/pcm;rate=16000", rate=16000),
        proto.AudioIn(pcm=pcm, mime_type="", rate=16000),
    ]


def test_other_realtime_inputs() -> None:
    def parse(body: object) -> list[proto.ClientEvent]:
        return proto.parse_client_message(proto.parse_frame(json.dumps({"realtime_input": body})))

    assert parse({"text": "hi"}) == [proto.TextIn("hi")]
    assert parse({"activityStart": {}}) == [proto.ActivityIn("activityStart")]
    assert parse({"audio_stream_end": True}) == [proto.ActivityIn("audioStreamEnd")]
    assert parse({"video": {"data": "AAAA", "mimeType": "image/jpeg"}}) == [
        proto.OtherMediaIn("image/jpeg", 3)
    ]
    for bad in ({"text": 3}, {"audio": {"data": "***"}}, {"nope": 1}, {"audioStreamEnd": "yes"}):
        with pytest.raises(proto.ProtocolError):
            parse(bad)


def test_client_content_and_tool_response() -> None:
    content = proto.parse_client_message(
        proto.parse_frame(
            json.dumps(
                {
                    "client_content": {
                        "turns": [
                            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                            {"role": "model", "parts": [{"text": "c"}]},
                        ],
                        "turnComplete": True,
                    }
                }
            )
        )
    )[0]
    assert isinstance(content, proto.ClientContentIn)
    assert content.turns == (("user", "a b"), ("model", "c"))
    assert content.turn_complete
    response = proto.parse_client_message(
        proto.parse_frame(
            json.dumps(
                {
                    "tool_response": {
                        "function_responses": [
                            {"id": "f-1", "name": "x", "response": {"snake_key": 1}}
                        ]
                    }
                }
            )
        )
    )[0]
    assert response == proto.ToolResponseIn(
        responses=({"id": "f-1", "name": "x", "response": {"snake_key": 1}},)
    )
    with pytest.raises(proto.ProtocolError, match="only be sent once"):
        proto.parse_client_message({"setup": {"model": "m"}})


_keys = st.sampled_from(
    ["realtimeInput", "realtime_input", "audio", "mimeType", "mime_type", "data", "args", "x_y"]
)
_frames = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)


def _outcome(parse: Callable[[], object]) -> object:
    try:
        return parse()
    except proto.ProtocolError as exc:
        return ("error", exc.code, exc.reason)


@given(_frames, st.booleans(), st.booleans())
def test_a_frame_is_parsed_alike_with_or_without_the_renaming_pass(
    value: object, ascii_only: bool, binary: bool
) -> None:
    # parse_frame skips normalise_keys when no key holds an underscore (values may: URL-safe
    # base64); the answer must be what the full pass gives, error or message, on every frame.
    text = json.dumps(value, ensure_ascii=ascii_only)
    frame: str | bytes = text.encode() if binary else text
    full = _outcome(lambda: proto.normalise_message(proto.decode_frame(frame)))
    assert _outcome(lambda: proto.parse_frame(frame)) == full


def test_an_escaped_underscore_is_still_renamed() -> None:
    frame = '{"realtime\\u005finput": {"audioStreamEnd": true}}'
    assert proto.parse_frame(frame) == {"realtimeInput": {"audioStreamEnd": True}}


def _standard_base64(text: object, where: str) -> bytes:
    """decode_base64 as it was, with the standard library alone."""
    if not isinstance(text, str):
        raise proto.ProtocolError(f"{where} must be a base64 string")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise proto.ProtocolError(f"{where} is not valid base64") from None


_base64ish = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="AQgw-_+/= \n\t.é", max_size=12),
)


@given(_base64ish)
def test_base64_is_decoded_as_the_standard_library_decodes_it(text: str) -> None:
    assert _outcome(lambda: proto.decode_base64(text, "d")) == _outcome(
        lambda: _standard_base64(text, "d")
    )


def test_pcm_rate() -> None:
    assert proto.pcm_rate("audio/pcm;rate=8000") == 8000
    assert proto.pcm_rate("audio/pcm") == 16000
    assert proto.pcm_rate("audio/opus") is None
    with pytest.raises(proto.ProtocolError):
        proto.pcm_rate("audio/pcm;rate=fast")


# --- server messages ---------------------------------------------------------------------------


def test_server_message_shapes_and_summaries() -> None:
    audio = messages.audio_chunk(b"\x00\x00" * 960)
    part = audio["serverContent"]["modelTurn"]["parts"][0]["inlineData"]
    assert part["mimeType"] == "audio/pcm;rate=24000"
    assert messages.summarise(audio) == "audio 40ms"
    assert messages.summarise(messages.server_flag("interrupted")) == "interrupted"
    assert messages.resumption_update(None) == {"sessionResumptionUpdate": {}}
    assert messages.summarise(messages.resumption_update("sim-1-2")) == "sim-1-2"
    assert messages.summarise(messages.tool_call([("c-1", "f", {})])) == "f#c-1"
    assert messages.format_duration(9.5) == "9.5s"
    assert messages.format_duration("10s") == "10s"
    with pytest.raises(ValueError, match="time_left"):
        messages.format_duration("ten seconds")
    assert messages.server_message_kind({"error": {}}) is None
    usage = messages.usage_metadata(10, 2, 5)["usageMetadata"]
    assert usage["totalTokenCount"] == 17


# --- audio -------------------------------------------------------------------------------------


def test_tone_has_the_right_pitch_level_and_fades() -> None:
    pcm = tone_pcm16(440.0, 0.5, level_dbfs=-12.0, rate=24000)
    assert len(pcm) == 2 * 12000
    assert analysis.dominant_frequency(pcm, 24000) == pytest.approx(440.0, abs=0.5)
    assert analysis.rms_dbfs(pcm) == pytest.approx(-12.0, abs=0.3)  # (full-scale sine = 0 dBFS)
    assert pcm[:2] == b"\x00\x00"
    assert [len(c) for c in split_chunks(pcm, 1920)][-1] == 1920 * 12.5 - 1920 * 12


def test_vad_finds_onset_and_end_of_a_burst() -> None:
    vad = EnergyVad(16000, threshold_dbfs=-40, start_ms=100, silence_ms=400)
    silence = b"\x00\x00" * 16000
    speech = tone_pcm16(1000.0, 0.6, level_dbfs=-20.0, rate=16000)
    events: list[SpeechStarted | SpeechEnded] = []
    stream = silence[:16000] + speech + silence
    for chunk in split_chunks(stream, 640):  # 20 ms chunks
        events += vad.feed(chunk)
    assert len(events) == 2
    start, end = events
    assert isinstance(start, SpeechStarted)
    assert start.at_s == pytest.approx(0.5, abs=0.03)
    assert isinstance(end, SpeechEnded)
    assert end.duration_s == pytest.approx(0.6, abs=0.05)
    assert end.at_s == pytest.approx(0.5 + 0.6 + 0.4, abs=0.05)


def test_vad_ignores_short_clicks_and_flushes_on_stream_end() -> None:
    vad = EnergyVad(16000, start_ms=100, silence_ms=400)
    click = tone_pcm16(1000.0, 0.06, level_dbfs=-10.0, rate=16000)
    assert vad.feed(click + b"\x00\x00" * 8000) == []
    assert vad.feed(tone_pcm16(1000.0, 0.3, rate=16000)) == [SpeechStarted(at_s=0.56)]
    assert vad.in_speech
    (end,) = vad.flush()
    assert isinstance(end, SpeechEnded)
    assert not vad.in_speech


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"answer_every_s": 0.0}, "answer_every_s must be positive"),
        ({"answer_every_s": 1.5, "answer_s": 0.0}, "answer_s must be positive"),
    ],
)
def test_scheduled_answer_options_are_checked(options: dict[str, float], message: str) -> None:
    assert ModelOptions().answer_every_s is None  # off unless asked for
    with pytest.raises(ValueError, match=message):
        ModelOptions(**options)


def test_split_transcript_keeps_the_text() -> None:
    pieces = split_transcript("Hello there, how are you?", 10)
    assert len(pieces) == 10
    assert "".join(pieces) == "Hello there, how are you?"
    assert split_transcript("", 3) == ["", "", ""]


# --- scripts -----------------------------------------------------------------------------------


def test_script_consumes_first_unused_matching_step() -> None:
    script = Script(
        [
            Step(on="caller", say="one"),
            Step(on="text", when="Role: Billing", say="billing"),
            Step(say="any"),
        ]
    )
    assert script.take("text", "Role: Sales") == Step(say="any")
    step = script.take("text", "Role: Billing agent")
    assert step is not None
    assert step.say == "billing"
    assert script.take("text", "Role: Billing agent") is None
    step = script.take("caller", "")
    assert step is not None
    assert step.say == "one"
    assert script.remaining() == []
    script.reset()
    assert len(script.remaining()) == 3


def test_load_yaml_script_with_bare_on_key(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(
        "steps:\n"
        "  - on: caller\n"
        "    hear: I want to sell\n"
        "    say: Sure.\n"
        "    seconds: 1\n"
        "    tool_call: {name: sell, args: {qty: 3}}\n"
        "    then_say: Done.\n"
        "  - {on: text, when: 'Role: X', tone_hz: 300, level_dbfs: -6}\n"
    )
    first, second = load_script(path).steps
    assert first == Step(
        on="caller",
        hear="I want to sell",
        say="Sure.",
        seconds=1.0,
        tool_call=ToolCallSpec("sell", {"qty": 3}),
        then_say="Done.",
    )
    assert (second.on, second.when, second.tone_hz, second.level_dbfs) == (
        "text",
        "Role: X",
        300,
        -6,
    )


def test_load_json_script(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"steps": [{"on": "text", "say": "hi"}]}))
    assert load_script(path).steps == (Step(on="text", say="hi"),)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("steps: [", "not valid YAML"),
        ("- say: hi\n", "mapping with a 'steps' list"),
        ("steps: {}\n", "'steps' must be a list"),
        ("steps:\n  - sya: hi\n", "step 1: unknown key 'sya'"),
        ("steps:\n  - say: hi\n  - on: phone\n", "step 2: 'on' must be any, text or caller"),
        ("steps:\n  - seconds: abc\n", "'seconds' must be a number"),
        ("steps:\n  - seconds: -1\n", "'seconds' must be positive"),
        ("steps:\n  - tool_call: {args: {}}\n", "non-empty 'name'"),
        ("steps: []\nextra: 1\n", "unknown top-level key"),
    ],
)
def test_script_errors_name_the_place(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ScriptError, match=message) as caught:
        load_script(path)
    assert str(path) in str(caught.value)


def test_missing_script_file_is_a_script_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read"):
        load_script(tmp_path / "nope.yaml")


HANDOFF_DECLARATION = {
    "name": "handoff_conversation",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "target": {"type": "STRING", "enum": ["billing", "sales"]},
            "reason": {"type": "STRING"},
            "summary": {"type": "STRING"},
        },
    },
}


def test_default_steps() -> None:
    assert role_from_instruction("You help.\nRole: Portfolio advisor\n") == "Portfolio advisor"
    assert role_from_instruction("- **Role:** Triage") == "Triage"
    assert role_from_instruction("nothing") == "assistant"
    text = default_step(
        "text",
        system_instruction="Role: Triage",
        function_declarations=[],
        caller_turns_answered=0,
    )
    assert text.say == "Hello, this is the Triage. How can I help you today?"
    first = default_step(
        "caller",
        system_instruction="",
        function_declarations=[HANDOFF_DECLARATION],
        caller_turns_answered=0,
    )
    assert first.say == "I understand. Let me help you with that."
    assert first.tool_call is None
    second = default_step(
        "caller",
        system_instruction="",
        function_declarations=[HANDOFF_DECLARATION],
        caller_turns_answered=1,
        heard=["a", "b"],
    )
    assert second.say == "Let me transfer you."
    assert second.tool_call is not None
    assert second.tool_call.name == "handoff_conversation"
    assert second.tool_call.args["target"] == "billing"
    assert second.tool_call.args["summary"] == "Caller said: a; b"
    assert handoff_target([{"name": "handoff_conversation", "parameters": {}}]) is None
    json_schema = {
        "name": "handoff_conversation",
        "parametersJsonSchema": {"properties": {"target": {"enum": ["x"]}}},
    }
    assert handoff_target([json_schema]) == "x"


def test_credentials_are_redacted_from_websockets_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert handshake.redact_target(LIVE + "?alt=1&key=abc&access_token=t") == (
        LIVE + "?alt=1&key=<redacted>&access_token=<redacted>"
    )
    log = handshake.RedactingLogger(logging.getLogger("callsim.test"))
    with caplog.at_level(logging.DEBUG, logger="callsim.test"):
        log.debug("< %s: %s", "X-Goog-Api-Key", "secret-1")
        log.debug("< %s: %s", "Authorization", "Token secret-2")
        log.debug("< GET %s HTTP/1.1", LIVE + "?key=secret-3")
        log.debug("< %s: %s", "Host", "127.0.0.1")
    assert "secret" not in caplog.text
    assert "127.0.0.1" in caplog.text
