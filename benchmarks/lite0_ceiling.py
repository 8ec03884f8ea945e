"""What 30 % expansion pruning costs EfficientNet-Lite0 when real images are used where udfc-hub has none.

    python benchmarks/lite0_ceiling.py [--limit 500] [--ratios 0.3 0.6] [--real 32 128]

An oracle, not a method: it bounds what the compensation (no training) can reach on this model, for the issue's
target of a drop <= 5 at 30 % of the expansion channels (and the head) + 6-bit weights.

1. Each group's cost alone: udfc+ (float weights) with only that group pruned, at each of ``--ratios``, scored on
   the images (the data decides nothing in udfc-hub; here it measures).
2. An oracle allocation: the same 30 % of all groups' channels spread greedily by those measured costs (monotone,
   linear between the measured ratios, at most 60 % of a group), and the sum of their costs (what the allocation
   predicts if the groups' errors added up).
3. That allocation and ``layer_ratios="stream"`` scored together, float, then with the refit
   (``refit="distilled"``) given ``--real`` real sample images that are not scored in place of distilled ones,
   and at 6 bits with ``rounding="probe"``.
4. For comparison, udfc-hub as it is (no data) at each of ``--sweep``'s ratios, 6-bit weights:
   ``layer_ratios="stream"``, and with the refit on distilled images and ``rounding="probe"``.

Scored on ``--limit`` evenly spaced images of the ImageNet sample fixture; the refit's real images are taken
evenly from the others. Writes benchmarks/results/lite0_ceiling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import timm.data
import torch

import udfc_hub
import udfc_hub.engine as engine
from udfc_hub.demo_weights import load_efficientnet_lite0
from udfc_hub.evaluation import load_eval_data
from udfc_hub.ops.allocate import allocate_greedy

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
MOST = 0.6  # the deepest a group is pruned by the oracle allocation (the moment allocation's floor keeps 40 %)


@contextmanager
def replaced(name: str, value):
    """``udfc_hub.engine.<name>`` replaced for the block: the oracle's widths or images instead of the engine's."""
    old = getattr(engine, name)
    setattr(engine, name, value)
    try:
        yield
    finally:
        setattr(engine, name, old)


def widths_of(model, **kw) -> dict[str, int]:
    """The widths udfc-hub's own allocation picks, as ``compress`` calls it."""
    seen: dict[str, int] = {}
    allocate = engine.allocate_widths

    def spy(*args, **kwargs):
        seen.update(allocate(*args, **kwargs))
        return dict(seen)

    with replaced("allocate_widths", spy):
        udfc_hub.compress(model, **kw)
    return seen


def oracle_allocation(sizes: dict[str, int], costs: dict[str, dict[float, float]], ratio: float):
    """Greedy spread of ``ratio`` of all channels by the measured costs (a group without any stays whole);
    returns widths and the summed cost."""
    curves = {}
    for name, n in sizes.items():
        if not costs[name]:
            curves[name] = torch.zeros(1, dtype=torch.float64)
            continue
        xs = [0.0, *sorted(costs[name])]
        ys = np.maximum.accumulate([0.0, *(max(0.0, costs[name][x]) for x in sorted(costs[name]))])
        k = np.arange(int(MOST * n) + 1) / n
        curves[name] = torch.tensor(np.interp(k, xs, ys), dtype=torch.float64)
    budget = round(ratio * sum(sizes.values()))
    widths = allocate_greedy(sizes, curves, budget)
    return widths, sum(float(curves[name][n - widths[name]]) for name, n in sizes.items())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=500, help="images scored (evenly spaced)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.6], help="each group's cost measured at")
    ap.add_argument("--groups", nargs="+", metavar="NAME", help="measure these groups only (the rest stay whole)")
    ap.add_argument("--real", nargs="+", type=int, default=[32, 128], help="real images for the oracle refit")
    ap.add_argument("--sweep", nargs="*", type=float, default=[0.1, 0.2, 0.3], help="ratios of the data-free rows")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    folder = FIXTURES / "imagenet_sample"
    if not (folder / "labels.tsv").exists():
        sys.exit(f"fixture missing: {folder} (set UDFC_FIXTURES)")
    torch.manual_seed(0)
    full = load_eval_data(folder)
    data = full.subset(args.limit)
    model = load_efficientnet_lite0()
    score = lambda m: udfc_hub.evaluate(m, data, batch_size=50)["top1"]  # noqa: E731
    fp = score(model)
    print(f"FP {fp:.2f} on {len(data)} images", flush=True)

    own = widths_of(model, prune_ratio=args.ratio, bits=None, layer_ratios="stream")
    sizes = {name: model.get_submodule(name).weight.shape[0] for name in own}
    costs: dict[str, dict[float, float]] = {name: {} for name in sizes}
    for r in args.ratios:
        for name, n in sizes.items():
            if args.groups and name not in args.groups:
                continue
            alone = {k: (max(1, round((1 - r) * v)) if k == name else v) for k, v in sizes.items()}
            with replaced("allocate_widths", lambda *a, w=alone, **k: dict(w)):
                top1 = score(udfc_hub.compress(model, prune_ratio=r, bits=None).model)
            costs[name][r] = fp - top1
            print(f"  {name} ({n}) {r:.0%} alone: top-1 {top1:.2f} (cost {fp - top1:.2f})", flush=True)
    oracle, summed = oracle_allocation(sizes, costs, args.ratio)
    print(f"oracle allocation: summed cost {summed:.2f}", flush=True)

    scored = set(np.linspace(0, len(full) - 1, len(data)).round().astype(int).tolist())
    held = [i for i in range(len(full)) if i not in scored]
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    rows = []
    plans = [(None, None, {}), *[(n, None, {}) for n in args.real], (max(args.real), 6, {"rounding": "probe"})]
    for alloc, widths in (("stream", own), ("oracle", oracle)):
        for real, bits, extra in plans:
            kw = dict(prune_ratio=args.ratio, bits=bits, **extra, **({"refit": "distilled"} if real else {}))
            pick = [held[j] for j in np.linspace(0, len(held) - 1, real).round().astype(int)] if real else []
            bank = torch.stack([transform(full.image(i)) for i in pick]) if pick else None
            start = time.perf_counter()
            with (
                replaced("allocate_widths", lambda *a, w=widths, **k: dict(w)),
                replaced("distill_images", lambda *a, b=bank, **k: (b, 0.0, 0.0)),
            ):
                result = udfc_hub.compress(model, **kw)
            secs = time.perf_counter() - start
            top1 = score(result.model)
            rows.append(
                {
                    "allocation": alloc,
                    "real_images": real or 0,
                    "bits": bits,
                    "kwargs": {k: v for k, v in kw.items() if k != "prune_ratio"},
                    "top1": top1,
                    "macs": result.report.after.macs,
                    "seconds": secs,
                }
            )
            print(f"  {alloc} real={real or 0} bits={bits}: top-1 {top1:.2f} ({secs:.0f} s)", flush=True)

    sweep = []
    for r in args.sweep:
        for extra in ({}, {"refit": "distilled", "rounding": "probe"}):
            kw = dict(prune_ratio=r, bits=6, layer_ratios="stream", **extra)
            start = time.perf_counter()
            result = udfc_hub.compress(model, **kw)
            secs = time.perf_counter() - start
            top1 = score(result.model)
            sweep.append({"kwargs": kw, "top1": top1, "macs": result.report.after.macs, "seconds": secs})
            print(f"  data-free {kw}: top-1 {top1:.2f} ({secs:.0f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    out = {"fp": fp, "n": len(data), "sizes": sizes, "costs": costs, "summed_cost": summed}
    out.update(widths={"stream": own, "oracle": oracle}, rows=rows, sweep=sweep)
    (args.out / "lite0_ceiling.json").write_text(json.dumps(out, indent=1) + "\n")
    cmd = " ".join(["python benchmarks/lite0_ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    md = [
        f"# EfficientNet-Lite0, {args.ratio:.0%} expansion pruning: the ceiling with real images (an oracle)",
        "",
        f"Command: `{cmd}`. Scored on {len(data)} evenly spaced sample images, FP top-1 {fp:.2f}. The real images",
        "that decide the oracle's allocation are the scored ones; the refit's are others. Not what udfc-hub does",
        "(it uses no data): the bound on what compensation without training reaches here.",
        "",
        "## Each group pruned alone (udfc+, float weights): cost in top-1 points",
        "",
        "| group | channels | " + " | ".join(f"{r:.0%}" for r in args.ratios) + " | stream keeps | oracle keeps |",
        "|---|---|" + "---|" * len(args.ratios) + "---|---|",
    ]
    cell = lambda name, r: f"{costs[name][r]:.1f}" if r in costs[name] else "-"  # noqa: E731
    md += [
        f"| {name} | {n} | " + " | ".join(cell(name, r) for r in args.ratios) + f" | {own[name]} | {oracle[name]} |"
        for name, n in sizes.items()
    ]
    pruned = sum(sizes.values()) - sum(oracle.values())
    md += [
        "",
        f"The oracle allocation prunes {pruned} of {sum(sizes.values())} channels; its groups' costs alone add up to "
        f"{summed:.1f} points.",
        "",
        "## Together",
        "",
        "| allocation | refit images | weights | top-1 | drop | MACs |",
        "|---|---|---|---|---|---|",
    ]
    images = lambda n: f"{n} real" if n else "none (no refit)"  # noqa: E731
    md += [
        f"| {r['allocation']} | {images(r['real_images'])} | {r['bits'] or 'float'}"
        f"{', probe rounding' if r['kwargs'].get('rounding') else ''} | {r['top1']:.2f} | {fp - r['top1']:.2f} | "
        f"{r['macs'] / 1e6:.1f} M |"
        for r in rows
    ]
    if sweep:
        md += [
            "",
            "## udfc-hub without data, by ratio (6-bit weights)",
            "",
            "| prune ratio | compress keyword arguments | top-1 | drop | MACs | seconds |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['kwargs']['prune_ratio']:.0%} | `"
            + ", ".join(f"{k}={v!r}" for k, v in r["kwargs"].items() if k not in ("prune_ratio", "bits"))
            + f"` | {r['top1']:.2f} | {fp - r['top1']:.2f} | {r['macs'] / 1e6:.1f} M | {r['seconds']:.1f} |"
            for r in sweep
        ]
    (args.out / "lite0_ceiling.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
