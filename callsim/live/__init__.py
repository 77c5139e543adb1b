"""A local Gemini Live server speaking the BidiGenerateContent websocket protocol over TLS."""
