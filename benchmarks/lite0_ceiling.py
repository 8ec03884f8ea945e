"""What 30 % expansion pruning costs EfficientNet-Lite0 when real images are used where udfc-hub has none.

    python benchmarks/lite0_ceiling.py [--limit 500] [--ratios 0.3 0.6] [--real 32 128]

An oracle, not a method: it bounds what the compensation (no training) can reach on this model, for the issue's
target of a drop <= 5 at 30 % of the expansion channels (and the head) + 6-bit weights.

1. Each group's cost alone: udfc+ (float weights) with only that group pruned, at each of ``--ratios``, scored on
   the images (the data decides nothing in udfc-hub; here it measures).
2. An oracle allocation: the same 30 % of all groups' channels spread greedily by those measured costs (monotone,
   linear between the measured ratios, at most 60 % of a group), and the sum of their costs (what the allocation
   predicts if the groups' errors added up).
3. A joint oracle allocation (``--joint-images``): the same 30 % spread by a lazy greedy that measures the groups
   together, each step pruning one more eighth of one group, the step that adds the least KL divergence from the
   original's predictions per channel, on ``--joint-images`` of the scored images; and the same greedy measured on
   udfc-hub's distilled images instead (``refit="distilled"``'s 8, no data: would it do as a method?), once per
   seed of ``--distill-seeds`` (0: the images the refit uses; others: how much the set matters; ``2+3``: the sets
   of seeds 2 and 3 together, 16 images, to tell a thin set from a poor measure; ``2+3:pipeline``: the search
   measures the model as the data-free 6-bit pipeline leaves it, ``rounding="probe"`` and ``refit="distilled"``
   on seed 0's images, instead of float weights without a refit).
4. Those allocations and ``layer_ratios="stream"`` scored together, float and at 6 bits with
   ``rounding="probe"``, then with the refit (``refit="distilled"``) given ``--real`` real sample images that are
   not scored in place of distilled ones, and at 6 bits with the refit on udfc-hub's own distilled images (the
   data-free pipeline with that allocation).
5. For comparison, udfc-hub as it is (no data) at each of ``--sweep``'s ratios, 6-bit weights:
   ``layer_ratios="stream"``, and with the refit on distilled images and ``rounding="probe"``.

Scored on ``--limit`` evenly spaced images of the ImageNet sample fixture; the refit's real images are taken
evenly from the others. Writes benchmarks/results/lite0_ceiling.json and .md; ``--reuse JSON`` takes the stages
already in an earlier run's JSON from it (same ``--limit`` and ``--ratio``) and runs the rest.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import timm.data
import torch

import udfc_hub
import udfc_hub.engine as engine
from udfc_hub.demo_weights import load_efficientnet_lite0
from udfc_hub.distill import distill_images
from udfc_hub.evaluation import load_eval_data
from udfc_hub.ops.allocate import allocate_greedy
from udfc_hub.probe import probe_batch_size

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


PIPELINE = {"bits": 6, "rounding": "probe", "refit": "distilled"}  # what a ``:pipeline`` search measures


def parse_pool(text: str) -> tuple[tuple[int, ...], bool]:
    """``--distill-seeds`` item: ``"3"`` one distilled set, ``"2+3"`` the sets of seeds 2 and 3 together; a
    ``":pipeline"`` suffix: the search measures the 6-bit pipeline (``PIPELINE``). Returns (seeds, pipeline)."""
    seeds, sep, mode = text.partition(":")
    try:
        pool = tuple(sorted({int(s) for s in seeds.split("+")}))
    except ValueError:
        pool = ()
    if not pool or (sep and mode != "pipeline"):
        raise SystemExit(f"--distill-seeds {text!r}: expected integer seeds joined by '+', then optionally ':pipeline'")
    if sep and 0 in pool:  # the refit fits every layer on seed 0's images: a KL there would flatter it
        raise SystemExit(
            f"--distill-seeds {text!r}: a ':pipeline' search measures on images the refit does not see; "
            "leave out seed 0 (e.g. 2+3:pipeline)"
        )
    return pool, bool(sep)


def pool_name(pool: tuple[int, ...], pipeline: bool = False) -> str:
    """The allocation's name: seed 0 alone is the refit's own set (``joint_distilled``), as in earlier runs."""
    name = "joint_distilled" + ("" if pool == (0,) else "_seed" if len(pool) == 1 else "_seeds")
    name += "" if pool == (0,) else "+".join(map(str, pool))
    return name + ("_pipeline" if pipeline else "")


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


def joint_allocation(model, sizes: dict[str, int], prunable, images, ratio: float, steps: int, log=print, **kw):
    """Lazy greedy over the ``prunable`` groups measured together: each step prunes one more ``1/steps`` of one
    group (at most ``steps - 1`` of them; udfc+ with those widths, float unless ``kw`` (more keyword arguments of
    ``compress``) says otherwise), the step that adds the least KL
    divergence of the compressed model's predictions on ``images`` from the original's, per channel it removes,
    until ``ratio`` of all channels (of every group in ``sizes``) are gone (the last step trimmed to land on the
    count). A step's cost is measured again only when it reaches the top of the heap after another step was taken
    (costs rise as more is pruned: lazy evaluation). Returns widths and [(group, width, KL)] per step."""
    model.eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(images), -1)

    def kl(widths):
        with replaced("allocate_widths", lambda *a, w=widths, **k: dict(w)):
            m = udfc_hub.compress(model, **{"prune_ratio": ratio, "bits": None, **kw}).model.eval()
        with torch.no_grad():
            out = torch.log_softmax(m(images), -1)
        return float((ref.exp() * (ref - out)).sum(-1).mean())

    def next_width(name, width):
        taken = round((sizes[name] - width) / sizes[name] * steps)
        return None if taken >= steps - 1 else max(1, round(sizes[name] * (1 - (taken + 1) / steps)))

    widths, current, taken, heap, trace = dict(sizes), 0.0, 0, [], []

    def push(name):
        width = next_width(name, widths[name])
        if width is not None:
            cost = kl(dict(widths, **{name: width}))
            heapq.heappush(heap, ((cost - current) / (widths[name] - width), name, taken, cost, width))

    for name in prunable:
        push(name)
    budget = round(ratio * sum(sizes.values()))
    while heap and sum(sizes.values()) - sum(widths.values()) < budget:
        _, name, version, cost, width = heapq.heappop(heap)
        if version != taken:  # measured before the last step: measure again
            push(name)
            continue
        widths[name], current, taken = width, cost, taken + 1
        trace.append((name, width, cost))
        log(f"  joint step {taken}: {name} -> {width} (KL {cost:.4f})")
        push(name)
    over = sum(sizes.values()) - sum(widths.values()) - budget
    if over > 0:
        widths[trace[-1][0]] += over
    return widths, trace


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=500, help="images scored (evenly spaced)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.6], help="each group's cost measured at")
    ap.add_argument("--groups", nargs="+", metavar="NAME", help="measure these groups only (the rest stay whole)")
    ap.add_argument("--real", nargs="+", type=int, default=[32, 128], help="real images for the oracle refit")
    ap.add_argument("--sweep", nargs="*", type=float, default=[0.1, 0.2, 0.3], help="ratios of the data-free rows")
    ap.add_argument("--joint-images", type=int, default=128, help="scored images the joint oracle measures (0: none)")
    ap.add_argument("--joint-steps", type=int, default=8, help="the joint oracle prunes a group in 1/N steps")
    ap.add_argument(
        "--distill-seeds", nargs="+", default=["0"], help="a joint allocation per distilled set (2+3: two sets pooled)"
    )
    ap.add_argument("--reuse", type=Path, help="an earlier run's JSON: its stages are taken, not run again")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    old = json.loads(args.reuse.read_text()) if args.reuse else {}
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

    if old and (old["n"] != len(data) or old.get("ratio", 0.3) != args.ratio):
        sys.exit(f"--reuse {args.reuse}: scored {old['n']} images at another ratio; run without --reuse")
    own = old["widths"]["stream"] if old else widths_of(model, prune_ratio=args.ratio, bits=None, layer_ratios="stream")
    sizes = {name: model.get_submodule(name).weight.shape[0] for name in own}
    costs: dict[str, dict[float, float]] = {name: {} for name in sizes}
    if old:  # JSON keys are strings
        costs = {name: {float(r): c for r, c in old["costs"][name].items()} for name in sizes}
        args.ratios = sorted({r for c in costs.values() for r in c})
    for r in [] if old else args.ratios:
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
    data_config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**data_config)
    allocations = {"stream": own, "oracle": oracle}
    traces = dict(old.get("traces", {}))
    measured = [name for name in sizes if not args.groups or name in args.groups]
    searches = {pool_name(*item): item for item in map(parse_pool, args.distill_seeds)}  # name: (seeds, pipeline)
    # the sets holding seed 0 last: the distillation the refit rows below use stays cached
    for alloc in ["joint", *sorted(searches, key=lambda a: 0 in searches[a][0])]:
        if alloc in old.get("widths", {}):
            allocations[alloc] = old["widths"][alloc]
            continue
        if not args.joint_images:
            continue
        pool, pipeline = searches.get(alloc, ((), False))  # (seeds sorted, as parse_pool returns them)
        if alloc == "joint":
            pick = np.linspace(0, len(data) - 1, min(args.joint_images, len(data))).round().astype(int)
            images = torch.stack([transform(data.image(int(i))) for i in pick])
        else:  # what refit="distilled" distils (seed 0: the in-memory cache then serves the rows below)
            size = tuple(data_config["input_size"])
            n = probe_batch_size(size)
            sets = [distill_images(model, size, n, engine.DISTILL_STEPS, seed=s)[0] for s in pool[::-1]]
            images = torch.cat(sets)
        start = time.perf_counter()
        kw = PIPELINE if pipeline else {}
        widths, trace = joint_allocation(model, sizes, measured, images, args.ratio, args.joint_steps, **kw)
        allocations[alloc] = widths
        traces[alloc] = {"images": len(images), "steps": trace, "seconds": time.perf_counter() - start}
        if pool:  # one seed as a number (as the runs before pooled sets), a pool as a list
            traces[alloc]["seed" if len(pool) == 1 else "seeds"] = pool[0] if len(pool) == 1 else list(pool)
        if kw:
            traces[alloc]["measured"] = kw
        print(f"{alloc} allocation: {len(trace)} steps, {traces[alloc]['seconds']:.0f} s", flush=True)
    allocations = {a: allocations[a] for a in ["stream", "oracle", "joint", *searches] if a in allocations}

    # (real images in place of the distilled ones, 0: none; bits; extra keyword arguments): no refit, the refit on
    # real images, and the refit on udfc-hub's own distilled images
    probe, refit = {"rounding": "probe"}, {"refit": "distilled"}
    plans = [(0, None, {}), (0, 6, probe), *[(n, None, refit) for n in args.real], (max(args.real), 6, probe | refit)]
    plans.append((0, 6, probe | refit))
    rows = [r for r in old.get("rows", []) if r["allocation"] in allocations]
    done = {(r["allocation"], r["real_images"], json.dumps(r["kwargs"], sort_keys=True)) for r in rows}
    for alloc, widths in allocations.items():
        for real, bits, extra in plans:
            kw = dict(prune_ratio=args.ratio, bits=bits, **extra)
            kwargs = {k: v for k, v in kw.items() if k != "prune_ratio"}
            if (alloc, real, json.dumps(kwargs, sort_keys=True)) in done:
                continue
            pick = [held[j] for j in np.linspace(0, len(held) - 1, real).round().astype(int)] if real else []
            bank = torch.stack([transform(full.image(i)) for i in pick]) if pick else None
            real_bank = replaced("distill_images", lambda *a, b=bank, **k: (b, 0.0, 0.0)) if real else nullcontext()
            start = time.perf_counter()
            with replaced("allocate_widths", lambda *a, w=widths, **k: dict(w)), real_bank:
                result = udfc_hub.compress(model, **kw)
            secs = time.perf_counter() - start
            top1 = score(result.model)
            rows.append(
                {
                    "allocation": alloc,
                    "real_images": real,
                    "bits": bits,
                    "kwargs": kwargs,
                    "top1": top1,
                    "macs": result.report.after.macs,
                    "seconds": secs,
                }
            )
            print(f"  {alloc} {kwargs} real={real}: top-1 {top1:.2f} ({secs:.0f} s)", flush=True)
    order = {a: i for i, a in enumerate(allocations)}
    rows.sort(key=lambda r: (order[r["allocation"]], "refit" in r["kwargs"], r["real_images"] or 1e9, bool(r["bits"])))

    sweep = old.get("sweep", [])
    for r in [] if sweep else args.sweep:
        for extra in ({}, {"refit": "distilled", "rounding": "probe"}):
            kw = dict(prune_ratio=r, bits=6, layer_ratios="stream", **extra)
            start = time.perf_counter()
            result = udfc_hub.compress(model, **kw)
            secs = time.perf_counter() - start
            top1 = score(result.model)
            sweep.append({"kwargs": kw, "top1": top1, "macs": result.report.after.macs, "seconds": secs})
            print(f"  data-free {kw}: top-1 {top1:.2f} ({secs:.0f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    out = {"fp": fp, "n": len(data), "ratio": args.ratio, "sizes": sizes, "costs": costs, "summed_cost": summed}
    out.update(widths=allocations, traces=traces, rows=rows, sweep=sweep)
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
        "| group | channels | "
        + " | ".join(f"{r:.0%}" for r in args.ratios)
        + "".join(f" | {a.replace('_', ' ')} keeps" for a in allocations)
        + " |",
        "|---|---|" + "---|" * (len(args.ratios) + len(allocations)),
    ]
    cell = lambda name, r: f"{costs[name][r]:.1f}" if r in costs[name] else "-"  # noqa: E731
    md += [
        f"| {name} | {n} | "
        + " | ".join(cell(name, r) for r in args.ratios)
        + "".join(f" | {w[name]}" for w in allocations.values())
        + " |"
        for name, n in sizes.items()
    ]
    pruned = sum(sizes.values()) - sum(oracle.values())
    md += [
        "",
        f"The oracle allocation prunes {pruned} of {sum(sizes.values())} channels; its groups' costs alone add up to "
        f"{summed:.1f} points.",
    ]
    for alloc, t in traces.items():
        where = "of the scored images"
        if alloc != "joint":
            pool = "+".join(map(str, t["seeds"])) if "seeds" in t else t.get("seed", 0)
            where = f"distilled from the BN statistics (no data; seed{'s' if 'seeds' in t else ''} {pool})"
        if "measured" in t:
            where += ", the model measured as " + ", ".join(f"{k}={v!r}" for k, v in t["measured"].items())
        else:
            where += ", the model measured with float weights and no refit"
        md += [
            "",
            f"The {alloc.replace('_', ' ')} allocation: {len(t['steps'])} greedy steps measured together on "
            f"{t['images']} images {where}, KL {t['steps'][-1][2] if t['steps'] else 0:.3f} at the last, "
            f"{t['seconds']:.0f} s.",
        ]
    md += [
        "",
        "## Together",
        "",
        "| allocation | refit images | weights | top-1 | drop | MACs |",
        "|---|---|---|---|---|---|",
    ]

    def images(r):
        if r["real_images"]:
            return f"{r['real_images']} real"
        return "distilled (no data)" if "refit" in r["kwargs"] else "none (no refit)"

    md += [
        f"| {r['allocation'].replace('_', ' ')} | {images(r)} | {r['bits'] or 'float'}"
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
