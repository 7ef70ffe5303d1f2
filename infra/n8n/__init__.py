"""The pinned n8n the workflow tests run: install (cached) and a loopback server."""
