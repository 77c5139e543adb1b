"""OpenAI Realtime: the second speech-to-speech provider, behind the same session seam."""
