"""Benchmark: the voice page in real Chromium against the loopback stack (figures only).

    .venv/bin/python bench/bench_browser_call.py [--calls 3]

Reports the bundle sizes (raw and gzip -9), and per call: navigation start -> agent greeting
shown (final transcript), -> first audible agent audio, and Connect click -> agent joined.
Each call opens a fresh page and gets a fresh room. Needs Debian's chromium and npm.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.loopback import LoopbackStack  # noqa: E402
from tests.browser.voice_page import Target, chromium, diagnostics, open_page, wait_for_segment  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    proc = subprocess.run([sys.executable, str(ROOT / "web" / "build.py")], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    root = Path(proc.stdout.strip().splitlines()[-1])
    files = json.loads((root / "BUILD.json").read_text())["files"]
    for name, facts in files.items():
        print(f"bundle {name}: {facts['bytes']} B, {facts['gzip_bytes']} B gzip -9")
    rows: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        stack = LoopbackStack(Path(tmp))
        try:
            t0 = time.monotonic()
            stack.start(root)
            print(f"loopback stack up in {time.monotonic() - t0:.1f} s")
            target = Target(url=stack.page_url())
            with chromium(target, audio_file=None) as browser:
                for i in range(args.calls):
                    page, _ = open_page(browser, target)
                    page.click("#connect")
                    wait_for_segment(page, "agent", "assistant", timeout_s=60)
                    t = diagnostics(page)["timings"]
                    row = (t["greeting"] / 1000, t["agentAudio"] / 1000, (t["agentJoined"] - t["connected"]) / 1000)
                    rows.append(row)
                    print(f"call {i + 1}: load -> greeting shown {row[0]:.2f} s, load -> first agent audio "
                          f"{row[1]:.2f} s, connect -> agent joined {row[2]:.2f} s")
                    page.click("#connect")
                    page.context.close()
        finally:
            stack.stop()
    if rows:
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"median over {len(rows)} calls: load -> greeting shown {med[0]:.2f} s, load -> first agent audio "
              f"{med[1]:.2f} s, connect -> agent joined {med[2]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
