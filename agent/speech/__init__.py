"""Offline speech backends (STT, TTS, a deterministic responder) behind one HTTP server."""
