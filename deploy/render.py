"""Render a service template outside pyinfra (unit tests, pre-deploy lint)."""
from __future__ import annotations

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from deploy.inventory import DEPLOY_DIR

_ENV = Environment(loader=FileSystemLoader(str(DEPLOY_DIR / "templates")), undefined=StrictUndefined,
                   keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(service: str, filename: str, variables: dict) -> str:
    """Render templates/<service>/<filename> with the variables a task passes to files.template."""
    return _ENV.get_template(f"{service}/{filename}").render(**variables)
