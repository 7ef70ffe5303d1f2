"""Voice-agent services: tokens, speech backends, the agent worker, webhooks, admin tools."""
