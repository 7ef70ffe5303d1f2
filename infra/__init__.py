"""Infrastructure: stack config, the environment spec, provider programs and local machines."""
