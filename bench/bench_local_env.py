"""Benchmark: local environment provisioning and boot-to-SSH times (figures, not a pass/fail).

    python bench/bench_local_env.py [--env benchlocal] [--nodes 1] [--keep]

Reports, for its own env: a cold `up` (no machines; caches such as the base image, the Go
build and the wheelhouse as they are on this host), a warm `up` (everything running), a
reboot of every machine (`up` after the machines were powered off: boot from an existing
root) and `down`. Boot-to-SSH is from starting systemd-nspawn to the first successful SSH.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra import up as pipeline  # noqa: E402
from infra.local import down, image, machines, up  # noqa: E402
from infra.steps import Progress  # noqa: E402


def timed(fn):
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="benchlocal")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the env running afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    quiet = Progress.quiet()
    image_cached = (image.path() / "etc" / "voicestack-image").exists()
    down.down(args.env, quiet)
    spec = pipeline.load(args.env, None, nodeCount=args.nodes)

    ctx, cold = timed(lambda: up.up(spec, quiet))
    cold_boot = dict(ctx.boot_s)
    _, warm = timed(lambda: up.up(spec, quiet))
    _, stop = timed(lambda: machines.stop(ctx.names))
    ctx2, reboot = timed(lambda: up.up(spec, quiet))
    teardown = 0.0
    if not args.keep:
        _, teardown = timed(lambda: down.down(args.env, quiet))

    rows = [
        ("nodes", f"{args.nodes}"),
        ("base image", "cached" if image_cached else "built during the cold up (debootstrap)"),
        ("cold up (no machines)", f"{cold:.1f} s"),
        ("  boot-to-SSH, new machines", ", ".join(f"{n} {s:.2f} s" for n, s in cold_boot.items())),
        ("warm up (env running)", f"{warm:.1f} s"),
        ("power off all machines", f"{stop:.1f} s"),
        ("up after power-off (reboot)", f"{reboot:.1f} s"),
        ("  boot-to-SSH, existing roots", ", ".join(f"{n} {s:.2f} s" for n, s in ctx2.boot_s.items())),
        ("down", f"{teardown:.1f} s" if not args.keep else "skipped (--keep)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
