"""What a call needs of a speech-to-speech model, whoever provides it.

The bridge talks to a :class:`~gateway.model.session.ModelSession` and hears
:mod:`~gateway.model.events`; it tells a new connection what to say in plain
:class:`~gateway.model.turns.Turn` values. Each provider (``gateway.live`` for Gemini Live,
``gateway.realtime`` for OpenAI Realtime) implements the session on its own SDK; nothing here
imports either SDK.
"""
