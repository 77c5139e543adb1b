"""Process settings from the environment (and ``.env``), validated once at start-up.

Everything a deployment varies lives here, named exactly as the environment variable users set,
so an error message can point at the variable to fix. Secrets are ``SecretStr``: they never
appear in a repr, a log line or an error message.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.agents import Provider
from gateway.carriers.telnyx_signature import load_public_key

#: The carriers the gateway can serve, in the order CARRIERS is normalised to.
CARRIER_NAMES: tuple[str, ...] = ("twilio", "telnyx")
#: The TELNYX_CODEC values TeXML's <Stream bidirectionalCodec> documents: not L16. The same
#: list as ``gateway.carriers.telnyx.TEXML_CODECS`` (not imported: it pulls in numpy, and
#: ``gateway check`` answers without).
TEXML_CODECS: tuple[str, ...] = ("PCMU", "PCMA", "G722")


#: Shorter admin tokens get a warning at start-up (``openssl rand -hex 32`` gives 64).
MIN_ADMIN_TOKEN_CHARS = 16


class ConfigError(Exception):
    """A start-up problem to report as one message and exit status 2 (any command: bad
    settings, a bad agents file, bad arguments). Lives here, below the commands, so that
    the commands' helpers (runner, demo) can raise it without importing the CLI."""


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY")
    )
    #: Overrides ``model`` from agents.yaml (the model never changes within a call).
    gemini_model: str | None = None
    #: A proxy, a regional endpoint or the local Live simulator. TLS trust follows SSL_CERT_FILE.
    gemini_base_url: str | None = None
    #: Pinned: google-genai 3.x would otherwise dial ``v1``, which the docs do not publish.
    gemini_api_version: str = "v1beta"
    #: For agents on ``provider: openai`` (OpenAI Realtime).
    openai_api_key: SecretStr | None = None
    #: Overrides ``model`` of an agents file on OpenAI (and the default of agents moved to it).
    openai_model: str | None = None
    #: Must end in ``/v1`` like the SDK's default ``https://api.openai.com/v1``: the realtime
    #: socket is ``<base>/realtime``. A proxy, Azure-style gateway or the local simulator.
    openai_base_url: str | None = None
    agents_file: Path = Path("agents.yaml")
    #: Public base URL (``https://gw.example.com``) used to build the ``wss://`` stream URL.
    public_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    #: Largest websocket message accepted from a carrier; Twilio's are ~400 bytes.
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: How far ahead of real time outbound audio is sent to the carrier. Enough to ride out
    #: network jitter; small enough that the gateway, not the carrier, holds the rest.
    playout_lead_ms: int = Field(default=240, ge=40, le=5000)
    #: Caller audio kept since the newest resumption handle, replayed when a connection is
    #: resumed (and queued while one is being replaced); beyond it a text recap is sent.
    resume_replay_ms: int = Field(default=15000, ge=0, le=60000)
    #: Call Control API key: needed to answer Call Control webhooks and to hang those calls up.
    telnyx_api_key: SecretStr | None = None
    #: Base64 Ed25519 public key from the Telnyx portal; when set, unsigned webhooks get 403.
    telnyx_public_key: str | None = None
    telnyx_api_base: str = "https://api.telnyx.com/v2"
    #: Codec asked of Telnyx both ways. G722 and L16 carry 16 kHz (wideband) audio; TeXML
    #: documents G722 (not L16) for bidirectional streams, Call Control documents both. Telnyx
    #: may stream the caller in the call's own codec; the gateway still speaks this one
    #: (carriers/telnyx.py has the rule and its sources).
    telnyx_codec: Literal["PCMU", "PCMA", "G722", "L16"] = "PCMU"
    #: Whether /telnyx/voice answers TeXML (form) webhooks; false serves Call Control only,
    #: which TELNYX_CODEC=L16 needs.
    telnyx_texml: bool = True

    # --- security ---------------------------------------------------------------------------
    #: Which carriers' routes exist at all; the others answer 404 and refuse stream upgrades.
    carriers: str = "twilio,telnyx"
    #: The explicit opt-out of start-up's refusal to serve a carrier whose webhooks it cannot
    #: verify (no TWILIO_AUTH_TOKEN / TELNYX_PUBLIC_KEY). For experiments only.
    allow_unsigned_webhooks: bool = False
    #: Stream sockets that have not yet proved themselves (no token in their URL), across all
    #: routes: over it a new token-less upgrade is refused. They never count as calls.
    max_pending_streams: int = Field(default=64, ge=1, le=100_000)
    #: Transcript text (what callers and agents said) in the logs: personal data, so off.
    log_transcripts: bool = False
    #: When set, every Twilio webhook and stream upgrade must carry a valid X-Twilio-Signature.
    twilio_auth_token: SecretStr | None = None
    #: With TWILIO_AUTH_TOKEN: lets the active agent's fallback replace a failed call's TwiML.
    twilio_account_sid: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    #: HMAC key for stream tokens. Unset: a random per-process key (one replica only).
    gateway_secret: SecretStr | None = None
    #: How long after the webhook a stream may start with its token.
    stream_token_ttl: float = Field(default=120.0, ge=5.0, le=3600.0)

    # --- limits -----------------------------------------------------------------------------
    #: Calls over this get a polite busy message instead of a stream.
    max_concurrent_calls: int = Field(default=200, ge=1)
    #: Seconds; a call is then ended politely (0 = no limit).
    max_call_duration: float = Field(default=3600.0, ge=0.0)
    #: Seconds with neither caller media nor model audio before a call is judged dead.
    call_idle_timeout: float = Field(default=60.0, ge=1.0)
    #: Seconds live calls may run on after SIGTERM before they are ended politely.
    drain_timeout: float = Field(default=30.0, ge=0.0)

    # --- conversation ---------------------------------------------------------------------
    #: Keypad digits closer together than this are one entry (``1234#`` typed at a normal
    #: pace); a longer pause ends the entry.
    dtmf_interdigit_ms: int = Field(default=1500, ge=100, le=10000)
    #: Seconds of caller silence, after the agent has finished speaking, before the agent
    #: is asked to check the caller is still there.
    idle_prompt_s: float = Field(default=20.0, ge=1.0)
    #: Seconds of further silence after that prompt before the call is ended politely.
    idle_hangup_s: float = Field(default=20.0, ge=1.0)
    #: IANA zone (``Europe/London``) for ``{{date}}`` and ``{{time}}`` in prompts: the
    #: business's clock, which is rarely the server's.
    timezone: str = "UTC"

    # --- call records, delivery, recordings, admin API ------------------------------------
    #: Where call records are kept (SQLAlchemy-style URL): SQLite by default, a file in the
    #: working directory; ``postgresql://user:pass@host/db`` for several replicas. Empty: no
    #: records are kept.
    database_url: SecretStr | None = SecretStr("sqlite:///calls.db")
    #: Each finished call record is POSTed here as JSON (signed with CALL_RECORDS_SECRET).
    call_records_url: str | None = None
    #: HMAC-SHA256 key of ``X-Callbridge-Signature``; required with CALL_RECORDS_URL.
    call_records_secret: SecretStr | None = None
    #: Seconds before the first retry of a failed delivery; doubles, at most 10 minutes apart.
    call_records_retry_s: float = Field(default=2.0, gt=0.0, le=600.0)
    #: Bearer token of the admin API (``/calls``, ``/admin/reload``); unset, those routes do
    #: not exist. Under :data:`MIN_ADMIN_TOKEN_CHARS` characters start-up warns.
    admin_api_token: SecretStr | None = None
    #: When set, each call is recorded to ``<dir>/<call id>.wav`` (stereo: caller left, agent
    #: right). Recording calls needs the callers' consent in most places.
    recordings_dir: Path | None = None
    #: Telnyx Call Control application (connection) id that outbound Call Control calls use.
    telnyx_connection_id: str | None = None

    # --- listening ------------------------------------------------------------------------
    #: Defaults for ``gateway serve --host/--port``.
    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=8080, ge=1, le=65535)
    #: Default for ``gateway serve --workers``: processes serving calls on the one port. Unset:
    #: one per core the container may use (``gateway.cpus.available_cpus``).
    workers: int | None = Field(default=None, ge=1)
    #: Under load, the event loop looks at its sockets at most once per this many ms and
    #: handles what arrived together (``gateway.pacing``); 0: it wakes for every message.
    loop_pacing_ms: float = Field(default=2.0, ge=0.0, le=10.0)
    #: Pacing starts once the process uses this share of one core (percent), and stops below
    #: three quarters of it; 0: always (for measuring two gateways side by side, which each
    #: carry half the calls and would sit at the threshold). A container with a fraction of
    #: a core may want it lower.
    loop_pacing_busy_pct: float = Field(default=20.0, ge=0.0, le=100.0)
    #: Caller frames take the compiled lane (``gateway.call.lane``) where it applies; false:
    #: every frame takes the bridge's Python path (the lane's specification), as a way back.
    compiled_lane: bool = True

    # --- Gemini Live connection -------------------------------------------------------------
    #: Websocket keepalive towards Gemini. Pongs have been seen to take 8-30 s under load, and a
    #: missed one kills the connection (1011), so the timeout is generous.
    live_ping_interval: float = Field(default=20.0, ge=1.0)
    live_ping_timeout: float = Field(default=30.0, ge=1.0)

    @field_validator(
        "gemini_api_key", "openai_api_key", "telnyx_api_key", "twilio_auth_token",
        "gateway_secret", "database_url", "call_records_secret", "admin_api_token",
    )  # fmt: skip
    @classmethod
    def _non_empty_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            return None
        return key

    @field_validator("gemini_base_url", "openai_base_url")
    @classmethod
    def _base_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "wss", "ws") or not parts.netloc:
            raise ValueError("must be a URL such as https://127.0.0.1:9443")
        return url

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an http(s) base URL such as https://gw.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return url.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None:
            return None
        scheme = url.get_secret_value().split("://", 1)[0].split("+", 1)[0]
        if "://" not in url.get_secret_value() or scheme not in (
            "sqlite",
            "postgresql",
            "postgres",
        ):
            raise ValueError(
                "must be sqlite:///path/to/calls.db or postgresql://user:password@host/db "
                "(empty keeps no records)"
            )
        return url

    @field_validator("call_records_url")
    @classmethod
    def _records_url(cls, url: str | None) -> str | None:
        if not url or not url.strip():
            return None
        parts = urlsplit(url.strip())
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://crm.example.com/calls")
        return url.strip()

    @field_validator("recordings_dir", "workers", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        name = name.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {name!r}; use an IANA name such as Europe/London, "
                "America/New_York or UTC"
            ) from None
        return name

    @field_validator("telnyx_public_key")
    @classmethod
    def _telnyx_key(cls, key: str | None) -> str | None:
        if not key or not key.strip():
            return None
        load_public_key(key)  # raises with the explanation
        return key.strip()

    @field_validator("carriers")
    @classmethod
    def _carriers(cls, value: str) -> str:
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in CARRIER_NAMES]
        if unknown:
            raise ValueError(
                f"unknown carrier {unknown[0]!r}; use a comma-separated list of "
                f"{', '.join(CARRIER_NAMES)}"
            )
        if not names:
            raise ValueError(f"name at least one carrier: {', '.join(CARRIER_NAMES)}")
        return ",".join(name for name in CARRIER_NAMES if name in names)

    @field_validator("telnyx_codec", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper().replace("-", "") if isinstance(value, str) else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("gateway_secret")
    @classmethod
    def _long_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. openssl rand -hex 32)")
        return secret

    @model_validator(mode="after")
    def _records_secret(self) -> Settings:
        if self.call_records_url is not None:
            if self.call_records_secret is None:
                raise ValueError(
                    "CALL_RECORDS_SECRET: needed with CALL_RECORDS_URL, so the receiver can "
                    "check each record came from this gateway (e.g. openssl rand -hex 32)"
                )
            if self.database_url is None:
                raise ValueError(
                    "CALL_RECORDS_URL: deliveries wait in the database's outbox, so "
                    "DATABASE_URL must not be empty"
                )
        return self

    @model_validator(mode="after")
    def _texml_codec(self) -> Settings:
        """TeXML's ``<Stream bidirectionalCodec>`` documents no L16: refuse to offer it.

        The message names its variables itself (a rule across settings has no one field).
        """
        texml = "telnyx" in self.served_carriers and self.telnyx_texml
        if texml and self.telnyx_codec not in TEXML_CODECS:
            raise ValueError(
                f"TELNYX_CODEC: {self.telnyx_codec} is documented for Telnyx Call Control only, "
                f"and TeXML is served (its <Stream> takes {', '.join(TEXML_CODECS)}); choose "
                "one of those, or set TELNYX_TEXML=false to serve Call Control alone"
            )
        return self

    @property
    def served_carriers(self) -> frozenset[str]:
        """The carriers whose routes the app registers (CARRIERS)."""
        return frozenset(self.carriers.split(","))

    def weak_admin_token(self) -> bool:
        """ADMIN_API_TOKEN is set but short enough to guess: ``serve`` warns (it is the
        operator's choice, and refusing to start over it would take the calls down too)."""
        token = self.admin_api_token
        return token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS

    def unverified_carriers(self) -> list[str]:
        """``"Twilio needs TWILIO_AUTH_TOKEN"``-style lines for every served carrier whose
        webhooks cannot be verified: anyone could then place calls and spend model quota."""
        missing = []
        if "twilio" in self.served_carriers and self.twilio_auth_token is None:
            missing.append("Twilio needs TWILIO_AUTH_TOKEN (Twilio console: Account, Auth Token)")
        if "telnyx" in self.served_carriers and self.telnyx_public_key is None:
            missing.append(
                "Telnyx needs TELNYX_PUBLIC_KEY (Telnyx portal: Keys & Credentials, Public Key)"
            )
        return missing

    def keyless(self, providers: Iterable[Provider]) -> list[Provider]:
        """Those of ``providers`` whose API key (GEMINI_API_KEY, OPENAI_API_KEY) is not set."""
        keys = {"gemini": self.gemini_api_key, "openai": self.openai_api_key}
        return [provider for provider in providers if keys[provider] is None]

    def model_override(self, provider: Provider) -> str | None:
        """GEMINI_MODEL or OPENAI_MODEL: the model every call on ``provider`` uses, if set."""
        return self.gemini_model if provider == "gemini" else self.openai_model

    def secrets(self) -> list[str]:
        """Every secret value configured, for the log scrubber."""
        keys = (self.gemini_api_key, self.openai_api_key, self.telnyx_api_key,
                self.twilio_auth_token, self.gateway_secret, self.call_records_secret,
                self.admin_api_token)  # fmt: skip
        found = [k.get_secret_value() for k in keys if k is not None]
        password = self.database_password()
        return [*found, password] if password else found

    def database_password(self) -> str | None:
        """The password inside DATABASE_URL, if any (for the log scrubber)."""
        if self.database_url is None:
            return None
        return urlsplit(self.database_url.get_secret_value()).password

    def tzinfo(self) -> ZoneInfo:
        """TIMEZONE as a zone for ``datetime.astimezone``."""
        return ZoneInfo(self.timezone)

    def ledger_retention_s(self) -> float:
        """How long the gateway remembers that a call has had its stream: longer than a token
        lives, so a replayed webhook's fresh token is refused as well."""
        return max(900.0, 2 * self.stream_token_ttl)

    def stream_base(self) -> str | None:
        """``wss://host[/prefix]`` from PUBLIC_URL, or None to derive it per request."""
        if self.public_url is None:
            return None
        scheme, rest = self.public_url.split("://", 1)
        return ("wss://" if scheme == "https" else "ws://") + rest


_ENV_NAMES = {
    "gemini_api_key": "GEMINI_API_KEY",
    "GEMINI_API_KEY": "GEMINI_API_KEY",
}


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's error into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across settings: its message names the variables
            raise SettingsError(message) from None
        field = str(err["loc"][0])
        name = _ENV_NAMES.get(field, field.upper())
        raise SettingsError(f"{name}: {message}") from None
