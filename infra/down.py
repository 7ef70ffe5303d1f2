"""`make down ENV=<env>`: remove an environment (local machines, or `pulumi destroy` for a stack).

The provisioner is the one that made it: the stack's `provider` setting, else the provider the
outputs recorded, else local (a local environment is found by its names, no file needed).
"""
from __future__ import annotations

import argparse
import os
import sys

from infra import outputs, provision
from infra.local.host import LocalEnvError
from infra.outputs import ROOT
from infra.steps import Progress, StepFailed, main_status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="local")
    ap.add_argument("--config", default=os.environ.get("CONFIG") or None)
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    progress = Progress()
    p = provision.get(provision.kind_of(args.env, args.config))
    return main_status(progress, [(f"remove {args.env} ({p.name})", lambda: p.down(args.env, progress.child()))],
                       errors=(StepFailed, LocalEnvError, outputs.OutputsError))


if __name__ == "__main__":
    sys.exit(main())
