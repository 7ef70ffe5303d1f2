"""Render a service template outside pyinfra (the tasks upload the result; the unit tests read it)."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent / "templates"
_ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                   keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(service: str, filename: str, variables: dict) -> str:
    """Render templates/<service>/<filename> with the variables a task passes to files.template."""
    return _ENV.get_template(f"{service}/{filename}").render(**variables)
