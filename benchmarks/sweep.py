"""The same sweep on the sequential engine and on Ray, in one run: identical rows, and the wall-time ratio.

    python benchmarks/sweep.py                  # 4 fixture CIFAR ResNets x 3 ratios x 2 bit widths x 2 methods
                                                # on the 10k fixture images (48 cells), both engines
    python benchmarks/sweep.py --limit 1000     # a quicker look
    python benchmarks/sweep.py --from-json      # tables, selection and plot again from results/sweep.json

Ray runs on this machine (a local runtime with every core, one CPU per task). Each engine's rows go to their own
results.jsonl; the benchmark compares them field by field (everything but timings and worker ids), prints the
per-cell time and memory by model size, and writes benchmarks/results/sweep.{json,md} and sweep_pareto.png (the
sweep's own Pareto plot). It also measures how much faster torch evaluates the largest model with two threads
than with one: the sequential engine uses all cores through torch, so that ratio bounds what running cells side
by side on Ray can add here. Needs the shared fixtures (UDFC_FIXTURES) and the [ray] extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import udfc_hub
from udfc_hub.sweeps import TIMING_FIELDS, sweep

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
WEIGHTS = FIXTURES / "weights" / "akamaster_resnet_cifar10"
CHECKPOINTS = {
    "cifar_resnet20": "resnet20-12fca82f.th",
    "cifar_resnet32": "resnet32-d509ac18.th",
    "cifar_resnet44": "resnet44-014dd654.th",
    "cifar_resnet56": "resnet56-4bfd9763.th",
}
GRID = dict(prune_ratios=[0.3, 0.4, 0.5], bits=[4, 6], methods=["udfc+", "udfc"])
MAX_DROP = 10.0  # the selection's budget (top-1 points): at these ratios no cell stays within 1 point


def thread_scaling(data: Path, limit: int | None) -> dict:
    """Evaluation time of the fixture cifar_resnet56 with 1 thread and with all cores (interleaved, best of 3),
    on 2000 images (or ``limit``)."""
    import torch

    from udfc_hub.evaluation import load_eval_data, predict

    model = udfc_hub.load_model("cifar_resnet56", checkpoint=WEIGHTS / CHECKPOINTS["cifar_resnet56"])
    ds = load_eval_data(data).subset(min(limit or 2000, 2000))
    threads = torch.get_num_threads()
    best = {1: float("inf"), threads: float("inf")}
    for _ in range(3):
        for n in best:
            torch.set_num_threads(n)
            start = time.perf_counter()
            predict(model, ds, batch_size=250)
            best[n] = min(best[n], time.perf_counter() - start)
    torch.set_num_threads(threads)
    return {"images": len(ds), "threads": threads, "one_thread_s": round(best[1], 2),
            "all_threads_s": round(best[threads], 2), "ratio": round(best[1] / best[threads], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="evaluate N evenly spaced images only")
    ap.add_argument("--models", nargs="+", choices=sorted(CHECKPOINTS), default=list(CHECKPOINTS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the tables and plot from sweep.json")
    ap.add_argument("--thread-scaling", action="store_true", help="only measure it again, into sweep.json")
    args = ap.parse_args(argv)
    if args.from_json or args.thread_scaling:
        out = json.loads((args.out / "sweep.json").read_text())
        if args.thread_scaling:
            out["thread_scaling"] = thread_scaling(FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz", None)
        report(out, args.out)
        return 0
    data = FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz"
    missing = [p for p in [data, *(WEIGHTS / c for c in CHECKPOINTS.values())] if not p.exists()]
    if missing:
        print(f"fixtures missing ({missing[0]}); set UDFC_FIXTURES", file=sys.stderr)
        return 2
    models = [f"{name}={WEIGHTS / CHECKPOINTS[name]}" for name in args.models]
    work = Path(tempfile.mkdtemp(prefix="udfc-sweep-bench-"))
    runs = {}
    for engine in ("sequential", "ray"):
        start = time.perf_counter()
        result = sweep(
            models, **GRID, data=data, limit=args.limit, batch_size=250, out=work / engine, engine=engine, progress=True
        )
        runs[engine] = (result, time.perf_counter() - start)
        print(f"{engine}: {len(result.rows)} cells in {runs[engine][1]:.1f} s", flush=True)

    def computed(rows):
        return {r["key"]: {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows}

    seq, ray_ = runs["sequential"][0], runs["ray"][0]
    differing = [k for k, v in computed(seq.rows).items() if computed(ray_.rows).get(k) != v]
    by_model = []
    for name in args.models:
        rows = [r for r in seq.rows if r["model"] == name]
        by_model.append(
            {
                "model": name,
                "params": rows[0]["params_before"],
                "compress_s_median": round(statistics.median(r["compress_s"] for r in rows), 3),
                "eval_s_median": round(statistics.median(r["eval_s"] for r in rows), 3),
                "cell_s_median": round(statistics.median(r["cell_s"] for r in rows), 3),
                "peak_rss_mb_ray_worker_max": max(r["peak_rss_mb"] for r in ray_.rows if r["model"] == name),
            }
        )
    out = {
        "command": " ".join(["python benchmarks/sweep.py", *(sys.argv[1:] if argv is None else argv)]),
        "udfc_hub": udfc_hub.__version__,
        "cpus": os.cpu_count(),
        "cells": len(seq.rows),
        "images": seq.rows[0]["n"],
        "sequential_s": round(runs["sequential"][1], 1),
        "ray_s": round(runs["ray"][1], 1),
        "speedup": round(runs["sequential"][1] / runs["ray"][1], 2),
        "identical_rows": not differing and len(seq.rows) == len(ray_.rows),
        "differing_cells": differing,
        "thread_scaling": thread_scaling(data, args.limit),
        "per_model": by_model,
        "rows": [{k: v for k, v in r.items() if k != "traceback"} for r in seq.rows],
    }
    shutil.rmtree(work, ignore_errors=True)
    report(out, args.out)
    return 0 if out["identical_rows"] else 1


def report(out: dict, folder: Path) -> None:
    """results/sweep.{json,md} and sweep_pareto.png from the measured ``out`` (rows, timings)."""
    from udfc_hub.sweeps import markdown_table, pareto_plot, select

    rows = out["rows"]
    selected = select(rows, MAX_DROP)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    pareto_plot(rows, selected, folder / "sweep_pareto.png")
    scaling = out["thread_scaling"]
    md = [
        "# Sweep: the sequential engine against Ray on this machine",
        "",
        f"`{out['command']}`: {out['cells']} cells ({len(out['per_model'])} fixture CIFAR ResNets x 3 prune ratios x "
        f"2 bit widths x 2 methods), {out['images']} images each, {out['cpus']} CPUs.",
        "",
        "| engine | wall time (s) |",
        "|---|---|",
        f"| sequential (one process, torch on all cores) | {out['sequential_s']} |",
        f"| Ray (local runtime, one CPU and one torch thread per task) | {out['ray_s']} |",
        "",
        f"Speed-up {out['speedup']}x; rows identical (every field but timings and worker ids): "
        f"{out['identical_rows']}.",
        "",
        f"Evaluation dominates every cell. torch evaluates cifar_resnet56 on {scaling['images']} images in "
        f"{scaling['one_thread_s']} s with one thread and {scaling['all_threads_s']} s with {scaling['threads']} "
        f"({scaling['ratio']}x): the sequential engine already gets that from both cores, so two single-thread Ray "
        f"tasks side by side can add at most about {out['cpus'] / scaling['ratio']:.2f}x here (less Ray's start-up "
        "and the wait on each model's float predictions).",
        "",
        "Per cell, by model size (sequential engine; memory: the highest resident-set high-water mark of a Ray "
        "worker that ran the model's cells, the worker's own torch/timm import included):",
        "",
        "| model | params | compress (s) | evaluate (s) | cell (s) | worker peak RSS (MB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m['model']} | {m['params']:,} | {m['compress_s_median']} | {m['eval_s_median']} | "
            f"{m['cell_s_median']} | {m['peak_rss_mb_ray_worker_max']} |"
            for m in out["per_model"]
        ),
        "",
        f"Selected with `max_drop={MAX_DROP}` (per model, the smallest artifact within {MAX_DROP} top-1 points "
        "of the float model): " + (", ".join(r["cell"] for r in selected) or "none"),
        "",
        "![top-1 against artifact size, one line per model](sweep_pareto.png)",
        "",
        "## Cells (sequential run)",
        "",
        markdown_table(rows, selected),
    ]
    (folder / "sweep.md").write_text("\n".join(md))
    print("\n".join(md[:24]))


if __name__ == "__main__":
    sys.exit(main())
