"""Writing files that must survive a crash and hold secrets."""
from __future__ import annotations

import os
from pathlib import Path

from agent.durable import replace_file


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600, its directory 0700.

    The data is flushed to disk before the rename and the directory after it, so a crash leaves
    either the old file or the new one, never an empty one (an empty secrets.json would make the
    next run generate new secrets and invalidate every token).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    replace_file(path, text.encode(), mode=0o600, tmp=path.with_name(path.name + ".tmp"))
