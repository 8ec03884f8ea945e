"""What one sweep cell costs, by model size: time and peak memory of compress + evaluate + save, per model.

    python benchmarks/sweep_cells.py            # 5 ImageNet-size timm models, random weights, ~3 min on 2 cores
    python benchmarks/sweep_cells.py --zoo      # + the parameter counts of timm's whole pretrained zoo (~5 min)

Each model runs in a fresh process (so that the peak resident set belongs to it alone): a one-cell sweep
(30 % + 6-bit, udfc+) on the sequential engine, evaluated on 100 images of the fixture ImageNet sample at the
model's own input size, artifact saved. Printed per model: parameters, float and artifact size, compress / evaluate
/ save time, evaluation time per image, and the process's peak RSS above its resident set once udfc_hub, torch
and timm are imported. These are the numbers docs/scaling.md extrapolates from. Writes
benchmarks/results/sweep_cells.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
MODELS = ("resnet18", "efficientnet_b0", "convnext_tiny", "resnet50", "vit_small_patch16_224")
IMAGES = 100


def _peak_rss_mb() -> float:
    """The process's resident-set high-water mark so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """The process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(model: str, data: Path, images: int) -> dict:
    """Run in the child process: one cell of ``model``; returns its measurements."""
    import time

    import timm
    import torch

    import udfc_hub
    from udfc_hub.profile import state_bytes

    baseline = _rss_mb()
    work = Path(tempfile.mkdtemp(prefix="udfc-cell-"))
    torch.manual_seed(0)
    base = timm.create_model(model)
    ckpt = work / f"{model}.pth"
    torch.save(base.state_dict(), ckpt)
    float_bytes = state_bytes(base)
    del base
    start = time.perf_counter()
    result = udfc_hub.sweep(
        [f"{model}={ckpt}"],
        prune_ratios=[0.3],
        bits=[6],
        data=data,
        limit=images,
        out=work / "out",
        save=True,
        progress=False,
    )
    total = time.perf_counter() - start
    (row,) = result.rows
    shutil.rmtree(work, ignore_errors=True)
    if row["status"] != "ok":
        raise SystemExit(f"{model}: {row['error']}")
    return {
        "model": model,
        "params": row["params_before"],
        "params_after": row["params"],
        "float_mb": round(float_bytes / 1e6, 1),
        "artifact_mb": round(row["file_bytes"] / 1e6, 2),
        "compress_s": row["compress_s"],
        "eval_s": row["eval_s"],
        "eval_ms_per_image": round(1000 * row["eval_s"] / row["n"], 1),
        "cell_s": row["cell_s"],
        "sweep_s": round(total, 2),
        "peak_rss_mb_above_imports": round(_peak_rss_mb() - baseline, 1),
        "import_rss_mb": round(baseline, 1),
    }


def zoo_sizes() -> dict:
    """Parameter counts of every architecture ``timm.list_models(pretrained=True)`` names (built on the meta
    device: no memory, no download), for the 1,000-model estimate in docs/scaling.md."""
    import timm
    import torch

    names = sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)})
    counts = []
    for name in names:
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in timm.create_model(name).parameters()))
    counts.sort()
    return {
        "architectures": len(names),
        "median_params_m": round(counts[len(counts) // 2] / 1e6, 1),
        "p90_params_m": round(counts[int(0.9 * len(counts))] / 1e6, 1),
        "max_params_m": round(counts[-1] / 1e6, 1),
        "over_300m": sum(c > 3e8 for c in counts),
        "float32_total_gb": round(4 * sum(counts) / 1e9, 1),
    }


def subprocess_zoo() -> dict:
    """``zoo_sizes`` in a fresh process (timm's model registry fully imported there, not here)."""
    proc = subprocess.run([sys.executable, __file__, "--child", ":zoo"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--zoo", action="store_true", help="also count the parameters of timm's pretrained zoo")
    ap.add_argument("--images", type=int, default=IMAGES, help=f"images per evaluation (default {IMAGES})")
    args = ap.parse_args(argv)
    data = FIXTURES / "imagenet_sample"
    if args.child:
        print(json.dumps(zoo_sizes() if args.child == ":zoo" else one(args.child, data, args.images)))
        return 0
    if not (data / "labels.tsv").is_file():
        print(f"fixture {data} missing; set UDFC_FIXTURES", file=sys.stderr)
        return 2
    rows = []
    for model in args.models:
        proc = subprocess.run([sys.executable, __file__, "--child", model], capture_output=True, text=True, check=False)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    command = " ".join(["python benchmarks/sweep_cells.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"command": command, "cpus": os.cpu_count(), "images": args.images, "rows": rows}
    if args.zoo:
        out["zoo"] = zoo = subprocess_zoo()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_cells.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [
        "# One sweep cell by model size (30 % + 6-bit, udfc+, random weights)",
        "",
        f"`{out['command']}`, {out['cpus']} CPUs, {args.images} ImageNet-sample images per evaluation, each model "
        "in a fresh process; memory is the peak resident set above the resident set after the imports (udfc_hub, "
        f"torch, timm: {rows[0]['import_rss_mb']} MB).",
        "",
        "| model | params | float (MB) | artifact (MB) | compress (s) | evaluate (ms/image) | cell (s) | "
        "peak RSS above imports (MB) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['float_mb']} | {r['artifact_mb']} | {r['compress_s']} "
            f"| {r['eval_ms_per_image']} | {r['cell_s']} | {r['peak_rss_mb_above_imports']} |"
            for r in rows
        ),
        "",
    ]
    if args.zoo:
        md += [
            f"timm's pretrained zoo: {zoo['architectures']} architectures; parameters: median "
            f"{zoo['median_params_m']} M, 90th percentile {zoo['p90_params_m']} M, largest {zoo['max_params_m']} M; "
            f"{zoo['over_300m']} above 300 M; {zoo['float32_total_gb']} GB of float32 weights in all.",
            "",
        ]
    (args.out / "sweep_cells.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
