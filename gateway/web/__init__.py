"""The web layer: the ASGI app, its routes, and how a carrier's websocket becomes a call.

``app`` builds the app from ``state``; ``ops`` serves health and metrics; ``twilio`` and
``telnyx`` serve each carrier's webhooks and stream upgrades; ``admission`` decides at a webhook
whether a new call gets a stream; ``streams`` turns an upgrade into a pending socket or a call;
``httputil`` holds the small HTTP helpers they share.
"""
