"""Compression wall time of timm ResNets at 30 % pruning + 6-bit weights (random init is fine for timing).

    python benchmarks/speed.py [--models resnet18 resnet34 resnet50 resnet101] [--repeats 3]

Prints and writes benchmarks/results/speed.json and speed.md: the median of --repeats runs of
``udfc_hub.compress``, beside the floor (creating the same model), on this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

import udfc_hub

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet34", "resnet50", "resnet101"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        model = timm.create_model(name).eval()
        udfc_hub.compress(model, prune_ratio=0.3, bits=6)  # warm-up
        secs = _median_seconds(lambda m=model: udfc_hub.compress(m, prune_ratio=0.3, bits=6), args.repeats)
        floor = _median_seconds(lambda n=name: timm.create_model(n), args.repeats)
        rows.append(
            {
                "model": name,
                "prune_ratio": 0.3,
                "bits": 6,
                "compress_seconds": round(secs, 3),
                "create_seconds": round(floor, 3),
            }
        )
        print(f"{name}: compress {secs:.2f} s (create the model: {floor:.2f} s)", flush=True)
    env = {
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    md = [
        "# Compression wall time, 30 % + 6-bit",
        "",
        f"Command: `python benchmarks/speed.py` (median of {args.repeats}; {env['cpus']} CPUs, "
        f"{env['cpu_threads']} torch threads, torch {env['torch']}).",
        "",
        "| model | compress s | create model s |",
        "|---|---|---|",
    ]
    md += [f"| {r['model']} | {r['compress_seconds']:.2f} | {r['create_seconds']:.2f} |" for r in rows]
    (args.out / "speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
