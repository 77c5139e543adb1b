"""Call records: one row per call in SQLite or PostgreSQL (``store``), and the outbox that
POSTs each finished record to CALL_RECORDS_URL, signed, until it is taken (``delivery``)."""
