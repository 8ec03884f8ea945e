"""Import cost: `import udfc_hub` against `import timm` (and `import torch`), each in a fresh interpreter.

    python benchmarks/import_time.py [--runs 7]

Each import runs --runs times, alternating, in a new Python process; the minimum of each is the figure (the
machine's noise only ever adds time). Also reported: whether `import udfc_hub` imported transformers (it must
not: the transformers twins register when transformers itself is imported), and the wall time of a usage error
that needs no model. Target (issue 38): udfc_hub / timm <= 1.15. Writes benchmarks/results/import_time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.15

_TIMED = "import sys, time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
_LOADED = "import sys, udfc_hub; print('transformers' in sys.modules)"


def _seconds(module: str) -> float:
    out = subprocess.run([sys.executable, "-c", _TIMED.format(module=module)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"import {module} failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def _command_seconds(args: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of the `udfc-hub` command (its launcher, as the console script runs it)."""
    code = f"import sys, udfc_hub_cli; sys.argv = ['udfc-hub', *{args!r}]; udfc_hub_cli.main()"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    modules = ("torch", "timm", "udfc_hub")
    times: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(args.runs):
        for m in modules:
            times[m].append(_seconds(m))
    best = {m: min(v) for m, v in times.items()}
    ratio = best["udfc_hub"] / best["timm"]
    loaded = subprocess.run([sys.executable, "-c", _LOADED], capture_output=True, text=True).stdout.strip()
    usage = min(_command_seconds(["compress", "resnet18", "--bits", "9"]) for _ in range(3))
    with tempfile.TemporaryDirectory() as home:  # a Hub host that does not resolve, an empty cache
        offline_env = {"HF_ENDPOINT": "https://hub.udfc-test.invalid", "HF_HOME": home, "HF_HUB_OFFLINE": ""}
        offline = _command_seconds(["compress", "resnet18", "--bits", "4", "--out", f"{home}/o"], offline_env)
    result = {
        "command": f"python benchmarks/import_time.py --runs {args.runs}",
        "python": platform.python_version(),
        "runs": args.runs,
        "seconds_min": {m: round(v, 3) for m, v in best.items()},
        "seconds_all": {m: [round(x, 3) for x in v] for m, v in times.items()},
        "ratio_udfc_hub_to_timm": round(ratio, 3),
        "target": TARGET,
        "met": ratio <= TARGET,
        "transformers_imported_by_import_udfc_hub": loaded == "True",
        "usage_error_seconds": round(usage, 2),
        "offline_failure_seconds": round(offline, 2),
    }
    out = REPO / "benchmarks" / "results"
    (out / "import_time.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| `import {m}` | {best[m]:.2f} | {', '.join(f'{x:.2f}' for x in times[m])} |" for m in modules)
    (out / "import_time.md").write_text(
        f"# Import cost (minimum of {args.runs} fresh interpreters each, alternating)\n\n"
        f"Command: `{result['command']}` (Python {result['python']})\n\n"
        f"| import | min (s) | every run (s) |\n|---|---|---|\n{rows}\n\n"
        f"udfc_hub / timm: **{ratio:.2f}** (target <= {TARGET}: {'met' if result['met'] else 'not met'}). "
        f"`import udfc_hub` imports transformers: {result['transformers_imported_by_import_udfc_hub']}. "
        f"A usage error (`udfc-hub compress resnet18 --bits 9`): {usage:.2f} s. `udfc-hub compress resnet18` with "
        f"a Hub host that does not resolve and an empty cache fails, with what to do, in {offline:.2f} s (the "
        "import, then one failed name look-up; it was 67 s of retries before).\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
