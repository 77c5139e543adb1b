"""Telnyx's side of media streaming, its webhooks and the Call Control API, from Telnyx's docs."""
