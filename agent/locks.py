"""Locks between processes on one host: flock on a file, which the kernel drops when its holder
dies (a crashed process never leaves a lock behind). Standard library only, like agent/durable.py:
the operator side imports it too (the verify suite, the local cloud's caches and host settings,
and agent/roundtrip_cli.py, which runs in the client namespaces of a local environment).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator

#: The niceness of a process that waits for a call slot or is done with its call (a verify
#: client loading its speech models, or transcribing what it heard). On a host whose cores the
#: local machines share, three clients loading at once starved the agent's speech in the call in
#: progress (a greeting heard as "your voids assistant"); a holder of a slot runs at 0 again.
WAITING_NICE = 10


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created 0600 if missing) for the block; waits for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def slot(directory: Path, slots: int, worker: str | None = None, prefix: str = ".verify-call") -> Iterator[int]:
    """Hold one of `slots` slots shared by every process using `directory` (lock files
    `<prefix>-<i>.lock` there). A free slot is taken at once; when all are held, the caller waits
    on one, chosen by its worker number (pytest-xdist's gw0, gw1, ...) so that waiters spread over
    the slots. Yields the slot's number."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    fds = [os.open(directory / f"{prefix}-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600) for i in range(slots)]
    try:
        held = None
        for i, fd in enumerate(fds):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = i
                break
            except BlockingIOError:
                continue
        if held is None:
            number = re.sub(r"\D", "", worker or os.environ.get("PYTEST_XDIST_WORKER", "")) or "0"
            held = int(number) % slots
            fcntl.flock(fds[held], fcntl.LOCK_EX)
        yield held
    finally:
        for fd in fds:
            os.close(fd)
