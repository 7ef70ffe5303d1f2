"""pyinfra deploy: the same tasks for every environment, driven by `.stack/<env>/outputs.json`."""
