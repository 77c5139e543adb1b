"""Settings from the environment: aliases, defaults, clear errors, no secret leaks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.settings import SettingsError, load_settings

ENV_NAMES = (
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_MODEL",
    "GEMINI_BASE_URL",
    "GEMINI_API_VERSION",
    "AGENTS_FILE",
    "PUBLIC_URL",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "MAX_MESSAGE_BYTES",
    "DTMF_INTERDIGIT_MS",
    "IDLE_PROMPT_S",
    "IDLE_HANGUP_S",
    "TIMEZONE",
    "DATABASE_URL",
    "CALL_RECORDS_URL",
    "CALL_RECORDS_SECRET",
    "ADMIN_API_TOKEN",
    "RECORDINGS_DIR",
    "WORKERS",
    "LOOP_PACING_MS",
    "LOOP_PACING_BUSY_PCT",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.gemini_api_key is None
    assert settings.gemini_api_version == "v1beta"
    assert str(settings.agents_file) == "agents.yaml"
    assert settings.public_url is None
    assert settings.stream_base() is None
    assert settings.loop_pacing_ms == 2.0
    assert settings.loop_pacing_busy_pct == 20.0


def test_google_api_key_is_an_alias_and_gemini_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key-123")
    settings = load_settings(_env_file=None)
    assert settings.gemini_api_key is not None
    assert settings.gemini_api_key.get_secret_value() == "google-key-123"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-456")
    settings = load_settings(_env_file=None)
    assert settings.gemini_api_key is not None
    assert settings.gemini_api_key.get_secret_value() == "gemini-key-456"
    assert "gemini-key-456" not in repr(settings)


def test_dotenv_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("GEMINI_API_KEY=from-dotenv-key\nGEMINI_MODEL=gemini-x\nUNRELATED=1\n")
    settings = load_settings(_env_file=str(env))
    assert settings.gemini_api_key is not None
    assert settings.gemini_api_key.get_secret_value() == "from-dotenv-key"
    assert settings.gemini_model == "gemini-x"


def test_public_url_builds_the_wss_stream_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_URL", "https://gw.example.com/")
    assert load_settings(_env_file=None).stream_base() == "wss://gw.example.com"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PUBLIC_URL", "gw.example.com", "PUBLIC_URL: must be an http(s) base URL"),
        ("PUBLIC_URL", "https://gw.example.com/?x=1", "PUBLIC_URL: must not carry a query"),
        ("GEMINI_BASE_URL", "localhost:9000", "GEMINI_BASE_URL: must be a URL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT:"),
        ("MAX_MESSAGE_BYTES", "12", "MAX_MESSAGE_BYTES:"),
        ("DTMF_INTERDIGIT_MS", "99", "DTMF_INTERDIGIT_MS: Input should be greater than or equal"),
        ("DTMF_INTERDIGIT_MS", "10001", "DTMF_INTERDIGIT_MS: Input should be less than or equal"),
        ("IDLE_PROMPT_S", "0.5", "IDLE_PROMPT_S: Input should be greater than or equal to 1"),
        ("IDLE_HANGUP_S", "0", "IDLE_HANGUP_S: Input should be greater than or equal to 1"),
        ("TIMEZONE", "Mars/Olympus", "TIMEZONE: unknown time zone 'Mars/Olympus'; use an IANA"),
        ("TIMEZONE", "America", "TIMEZONE: unknown time zone 'America'"),
        ("TIMEZONE", "../etc/passwd", "TIMEZONE: unknown time zone"),
        ("WORKERS", "0", "WORKERS: Input should be greater than or equal to 1"),
        ("WORKERS", "auto", "WORKERS: Input should be a valid integer"),
        ("LOOP_PACING_MS", "-1", "LOOP_PACING_MS: Input should be greater than or equal to 0"),
        ("LOOP_PACING_MS", "50", "LOOP_PACING_MS: Input should be less than or equal to 10"),
        (
            "LOOP_PACING_BUSY_PCT",
            "-5",
            "LOOP_PACING_BUSY_PCT: Input should be greater than or equal to 0",
        ),
        (
            "LOOP_PACING_BUSY_PCT",
            "150",
            "LOOP_PACING_BUSY_PCT: Input should be less than or equal to 100",
        ),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722", "L16"])
@pytest.mark.parametrize("carriers", ["twilio,telnyx", "telnyx", "twilio"])
@pytest.mark.parametrize("texml", ["true", "false"])
def test_telnyx_codec_l16_only_without_texml(
    monkeypatch: pytest.MonkeyPatch, codec: str, carriers: str, texml: str
) -> None:
    """L16 is Call Control's (TeXML's <Stream> documents PCMU, PCMA, G722): refused while the
    Telnyx routes answer TeXML, allowed with TELNYX_TEXML=false or without Telnyx at all."""
    monkeypatch.setenv("TELNYX_CODEC", codec)
    monkeypatch.setenv("CARRIERS", carriers)
    monkeypatch.setenv("TELNYX_TEXML", texml)
    if codec == "L16" and "telnyx" in carriers and texml == "true":
        with pytest.raises(SettingsError) as info:
            load_settings(_env_file=None)
        assert str(info.value) == (
            "TELNYX_CODEC: L16 is documented for Telnyx Call Control only, and TeXML is served "
            "(its <Stream> takes PCMU, PCMA, G722); choose one of those, or set "
            "TELNYX_TEXML=false to serve Call Control alone"
        )
    else:
        settings = load_settings(_env_file=None)
        assert (settings.telnyx_codec, settings.telnyx_texml) == (codec, texml == "true")


def test_an_invalid_key_setting_never_echoes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "   ")
    assert load_settings(_env_file=None).gemini_api_key is None


def test_conversation_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert (settings.dtmf_interdigit_ms, settings.idle_prompt_s, settings.idle_hangup_s) == (
        1500,
        20.0,
        20.0,
    )
    assert settings.timezone == "UTC"
    assert settings.tzinfo() == ZoneInfo("UTC")
    monkeypatch.setenv("DTMF_INTERDIGIT_MS", "800")
    monkeypatch.setenv("IDLE_PROMPT_S", "7.5")
    monkeypatch.setenv("IDLE_HANGUP_S", "12")
    monkeypatch.setenv("TIMEZONE", " Europe/London ")
    settings = load_settings(_env_file=None)
    assert (settings.dtmf_interdigit_ms, settings.idle_prompt_s, settings.idle_hangup_s) == (
        800,
        7.5,
        12.0,
    )
    assert settings.tzinfo() == ZoneInfo("Europe/London")
    noon = datetime(2025, 7, 1, 12, 0, tzinfo=UTC).astimezone(settings.tzinfo())
    assert noon.hour == 13  # British Summer Time: the zone database is there (tzdata)


def test_call_record_defaults_and_what_empty_means(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "sqlite:///calls.db"
    assert (settings.call_records_url, settings.admin_api_token) == (None, None)
    assert settings.call_records_retry_s == 2.0 and settings.recordings_dir is None
    for name in ("DATABASE_URL", "RECORDINGS_DIR", "ADMIN_API_TOKEN", "CALL_RECORDS_URL"):
        monkeypatch.setenv(name, "")
    empty = load_settings(_env_file=None)
    assert (empty.database_url, empty.recordings_dir, empty.admin_api_token) == (None, None, None)
    assert empty.call_records_url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL: must be sqlite:///"),
        ({"CALL_RECORDS_URL": "crm.example.com"}, "CALL_RECORDS_URL: must be an http(s) URL"),
        ({"CALL_RECORDS_URL": "https://crm.example.com/r"}, "CALL_RECORDS_SECRET: needed with"),
        ({"CALL_RECORDS_URL": "https://crm.example.com/r", "CALL_RECORDS_SECRET": "s" * 20,
          "DATABASE_URL": ""}, "CALL_RECORDS_URL: deliveries wait in the database's outbox"),
        ({"CALL_RECORDS_RETRY_S": "0"}, "CALL_RECORDS_RETRY_S: "),
    ],
)  # fmt: skip
def test_call_record_settings_that_cannot_work_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith(message)


def test_a_short_admin_token_is_weak_but_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_API_TOKEN", "short")
    assert load_settings(_env_file=None).weak_admin_token()
    monkeypatch.setenv("ADMIN_API_TOKEN", "a" * 32)
    settings = load_settings(_env_file=None)
    assert not settings.weak_admin_token()
    assert "a" * 32 in settings.secrets()  # the log scrubber knows it


def test_the_database_password_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://gw:pa55word-xyz@db:5432/calls")
    settings = load_settings(_env_file=None)
    assert "pa55word-xyz" in settings.secrets()
    assert "pa55word-xyz" not in repr(settings)


@pytest.mark.parametrize(("value", "workers"), [(None, None), ("", None), (" ", None), ("3", 3)])
def test_workers_unset_or_empty_leave_it_to_the_cpu_count(
    monkeypatch: pytest.MonkeyPatch, value: str | None, workers: int | None
) -> None:
    if value is not None:
        monkeypatch.setenv("WORKERS", value)
    assert load_settings(_env_file=None).workers == workers
