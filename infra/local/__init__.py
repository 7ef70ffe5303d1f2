"""Local environment: machines that behave like VPSs inside an emulated cloud (see up.py)."""
