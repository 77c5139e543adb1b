"""Call records: what a call leaves behind.

The record built from a call's events (``record``), kept in SQLite or PostgreSQL
(``store``), POSTed to CALL_RECORDS_URL from an outbox until it is taken (``delivery``),
written and checkpointed while the gateway runs (``service``), the call's stereo WAV
(``recording``), and ``gateway calls`` (``shell``).
"""
