"""The process's model providers: one SDK client each, and every call's session factory.

A call's provider and model are fixed when it starts, from the agents file in force then
(a reload changes them for later calls only). A file whose agents all run on one provider gets
that provider's session; one that mixes providers gets a
:class:`~gateway.model.switch.ProviderSwitch`. Clients are made on first use, so a gateway
whose agents are all on OpenAI needs no Gemini key, and the other way round.
"""

from __future__ import annotations

import ssl
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from google import genai

from gateway.agents import PROVIDER_NAMES, AgentGraph, Provider
from gateway.audio.transcode import AudioFormat
from gateway.live.client import make_client
from gateway.live.machine import Policy
from gateway.live.session import LiveSession
from gateway.model.session import ModelSession, SessionFactory
from gateway.model.switch import ProviderSwitch
from gateway.model.turns import Conversation
from gateway.model.websocket import websocket_options
from gateway.realtime.client import make_openai_client
from gateway.realtime.session import RealtimeSession, ReconnectPolicy
from gateway.settings import Settings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

#: The setting that holds each provider's key, for messages.
KEY_SETTINGS: dict[Provider, str] = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY"}


class ModelProviders:
    """See the module docstring. ``ssl_context`` trusts the built-in simulators' CA."""

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._ssl_context = ssl_context
        self._gemini: genai.Client | None = None
        self._openai: AsyncOpenAI | None = None
        self._gemini_policy = Policy(replay_limit_ms=settings.resume_replay_ms)
        self._openai_policy = ReconnectPolicy(replay_limit_ms=settings.resume_replay_ms)
        self._openai_ws = websocket_options(settings, ssl_context=ssl_context)

    def model(self, graph: AgentGraph, provider: Provider) -> str:
        """The model ``provider`` serves a call on ``graph`` with: its setting
        (GEMINI_MODEL, OPENAI_MODEL) if set, else the file's."""
        return self._settings.model_override(provider) or graph.model_of(provider)

    def missing_keys(self, graph: AgentGraph) -> list[str]:
        """The providers ``graph`` needs whose key is not set, as one line each."""
        return [
            f"{KEY_SETTINGS[p]} is not set, and agents run on {PROVIDER_NAMES[p]}"
            for p in self._settings.keyless(graph.providers)
        ]

    def sessions(self, graph: AgentGraph) -> SessionFactory:
        """The session factory of one call on ``graph``."""
        models = {provider: self.model(graph, provider) for provider in graph.providers}

        def new_session(
            log: structlog.stdlib.BoundLogger, conversation: Conversation, carrier: AudioFormat
        ) -> ModelSession:
            makers = {
                provider: partial(self._session, provider, model, log, conversation, carrier)
                for provider, model in models.items()
            }
            if len(makers) == 1:
                return next(iter(makers.values()))()
            return ProviderSwitch(makers)

        return new_session

    def _session(
        self,
        provider: Provider,
        model: str,
        log: structlog.stdlib.BoundLogger,
        conversation: Conversation,
        carrier: AudioFormat,
    ) -> ModelSession:
        if provider == "gemini":
            if self._gemini is None:
                self._gemini = make_client(self._settings, ssl_context=self._ssl_context)
            return LiveSession(
                self._gemini, model, conversation, log=log, policy=self._gemini_policy
            )
        if self._openai is None:
            self._openai = make_openai_client(self._settings)
        return RealtimeSession(
            self._openai,
            model,
            conversation,
            carrier,
            log=log,
            policy=self._openai_policy,
            websocket_options=dict(self._openai_ws),
        )

    def endpoints(self) -> dict[str, Any]:
        """Where each provider is reached, for the start-up log (never a key)."""
        return {
            "gemini": self._settings.gemini_base_url or "default",
            "openai": self._settings.openai_base_url or "default",
        }
