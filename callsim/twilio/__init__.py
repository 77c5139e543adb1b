"""Twilio's side of Media Streams and its webhooks, written from Twilio's documentation."""
