"""Voice agent services: worker, offline speech server, round-trip client."""
