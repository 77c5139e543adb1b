"""A local OpenAI Realtime API simulator (GA protocol), the sibling of ``callsim.live``."""
