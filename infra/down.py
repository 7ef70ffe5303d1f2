"""`make down ENV=<env>`: remove an environment (local machines, or `pulumi destroy` for a stack)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from infra.outputs import ROOT
from infra.steps import PYTHON, Progress, StepFailed, command
from infra.up import stack_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="local")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    p = Progress()
    try:
        if stack_file(args.env) is None:
            p.run("remove local environment", lambda: command([PYTHON, "-m", "infra.local", "down", "--env", args.env]))
        else:
            if shutil.which("pulumi") is None:
                raise StepFailed("the pulumi CLI is not installed; see docs/cloud.md")
            p.run("pulumi destroy", lambda: command(["pulumi", "destroy", "--yes", "--stack", args.env]))
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
