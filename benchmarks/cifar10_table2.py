"""CIFAR-10 ResNets (paper Table 2 and Fig. 2 settings), measured on the fixture test images.

    python benchmarks/cifar10_table2.py                       # everything: ~25 min on 2 cores
    python benchmarks/cifar10_table2.py --models cifar_resnet56 --sections table --limit 500   # a quick look

Sections: ``table`` (prune / nm / udfc at full precision and udfc with 4-bit weights, at 30/40/50 %, criteria l1
and l2), ``quant`` (quantization only, rtn vs udfc at 2..8 bits), ``grid`` (udfc, pruning ratio 0.1..0.5 x bits
4..8). Writes benchmarks/results/cifar10_table2.json (one row per run), cifar10_table2.md (beside the paper's
numbers and the method doc's check numbers) and PNG plots. Needs the shared fixtures (UDFC_FIXTURES).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import timm

import udfc_hub
from udfc_hub.evaluation import load_eval_data, predict

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
CHECKPOINTS = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet56": "resnet56-4bfd9763.th"}
RATIOS = (0.3, 0.4, 0.5)

# paper Table 2, ResNet-56 (FP 93.88): Prune and NM at full precision, UDFC with 4-bit weights; (l2, l1)
PAPER = {
    ("prune", 0.3): (76.95, 74.46),
    ("nm", 0.3): (85.22, 84.41),
    ("udfc4", 0.3): (90.33, 90.28),
    ("prune", 0.4): (46.44, 49.68),
    ("nm", 0.4): (76.56, 77.89),
    ("udfc4", 0.4): (86.99, 87.29),
    ("prune", 0.5): (24.34, 25.58),
    ("nm", 0.5): (56.18, 56.45),
    ("udfc4", 0.5): (81.90, 81.60),
}
PAPER_FP = 93.88
# the method doc's independent implementation on the same 10k images (resnet56, FP 83.20)
CHECK = {
    ("prune", "l2", 0.3, None): 57.77,
    ("nm", "l2", 0.3, None): 69.33,
    ("udfc", "l2", 0.3, None): 62.27,
    ("udfc", "l2", 0.3, 4): 41.68,
    ("prune", "l2", 0.4, None): 36.66,
    ("nm", "l2", 0.4, None): 56.73,
    ("udfc", "l2", 0.4, None): 34.51,
    ("udfc", "l2", 0.4, 4): 27.03,
    ("prune", "l2", 0.5, None): 24.17,
    ("nm", "l2", 0.5, None): 39.59,
    ("udfc", "l2", 0.5, None): 24.10,
    ("udfc", "l2", 0.5, 4): 19.49,
    ("prune", "l1", 0.3, None): 62.56,
    ("nm", "l1", 0.3, None): 70.47,
    ("udfc", "l1", 0.3, None): 72.00,
    ("udfc", "l1", 0.3, 4): 58.91,
    ("rtn", "l2", 0.0, 4): 79.50,
    ("udfc", "l2", 0.0, 4): 74.58,
    ("rtn", "l2", 0.0, 6): 82.76,
    ("udfc", "l2", 0.0, 6): 82.79,
    ("rtn", "l2", 0.0, 8): 83.20,
    ("udfc", "l2", 0.0, 8): 83.17,
}


def runs(section: str) -> list[tuple[str, str, float, int | None]]:
    """(method, criterion, prune_ratio, bits) of a section."""
    if section == "table":
        return [
            (m, c, r, b)
            for c in ("l2", "l1")
            for r in RATIOS
            for m, b in (("prune", None), ("nm", None), ("udfc", None), ("udfc", 4))
        ]
    if section == "quant":
        return [(m, "l2", 0.0, b) for b in range(2, 9) for m in ("rtn", "udfc")]
    if section == "grid":
        return [("udfc", "l2", r, b) for r in (0.1, 0.2, 0.3, 0.4, 0.5) for b in range(4, 9)]
    raise ValueError(section)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_resnet20"], choices=list(CHECKPOINTS))
    ap.add_argument("--sections", nargs="+", default=["table", "quant", "grid"], choices=["table", "quant", "grid"])
    ap.add_argument("--limit", type=int, help="evaluate N evenly spaced images only (smoke runs)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    args = ap.parse_args(argv)

    data_path = FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz"
    if not data_path.exists():
        sys.exit(f"fixture missing: {data_path} (set UDFC_FIXTURES)")
    data = load_eval_data(data_path)
    rows = []
    for name in args.models:
        ckpt = FIXTURES / "weights" / "akamaster_resnet_cifar10" / CHECKPOINTS[name]
        model = timm.create_model(name, checkpoint_path=str(ckpt)).eval()
        subset = data.subset(args.limit) if args.limit else data
        fp_pred = predict(model, subset, batch_size=500)  # the reference for every agreement below
        fp = udfc_hub.evaluate(model, subset, batch_size=500)
        rows.append(_row(name, "fp", None, 0.0, None, fp, 0.0))
        print(f"{name}: FP top-1 {fp['top1']:.2f} on {fp['n']} images", flush=True)
        for section in args.sections:
            for method, crit, ratio, bits in runs(section):
                t0 = time.perf_counter()
                result = udfc_hub.compress(
                    model, prune_ratio=ratio, bits=bits, method=method, criterion=crit, granularity="tensor"
                )
                secs = time.perf_counter() - t0
                res = udfc_hub.evaluate(result.model, subset, batch_size=500, reference=fp_pred)
                rows.append(_row(name, method, crit, ratio, bits, res, secs, section))
                print(
                    f"  {section:5} {method:>5} {crit} ratio={ratio} bits={bits}: top-1 {res['top1']:.2f} "
                    f"(agreement {res['agreement']:.2f}, {secs:.2f} s)",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cifar10_table2.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "cifar10_table2.md").write_text(markdown(rows, " ".join(sys.argv[1:] if argv is None else argv)))
    if not args.no_plots:
        plot(rows, args.out)
    print(f"wrote {args.out}/cifar10_table2.json, .md" + ("" if args.no_plots else " and plots"))


def _row(model, method, crit, ratio, bits, res, secs, section="fp"):
    return {
        "model": model,
        "section": section,
        "method": method,
        "criterion": crit,
        "prune_ratio": ratio,
        "bits": bits,
        "top1": res["top1"],
        "top5": res["top5"],
        "agreement": res["agreement"],
        "n": res["n"],
        "compress_seconds": round(secs, 3),
    }


def _find(rows, model, method, crit, ratio, bits):
    for r in rows:
        if (r["model"], r["method"], r["criterion"], r["prune_ratio"], r["bits"]) == (model, method, crit, ratio, bits):
            return r["top1"]
    return None


def _f(v):
    return "" if v is None else f"{v:.2f}"


def markdown(rows, cli_args) -> str:
    n = rows[0]["n"]
    out = [
        "# CIFAR-10 ResNets on the fixture test images",
        "",
        f"Command: `python benchmarks/cifar10_table2.py{' ' + cli_args if cli_args else ''}` ({n} images).",
        "",
        "The fixture images are JPEG (quality 75), so every model scores about 10 points below its clean accuracy",
        "(resnet56: 83.2 here, 93.6 clean). Compare the **drop from FP**, not the absolute numbers, with the paper.",
        "Prune and NM rows are full precision; 'udfc 4b' has 4-bit weights (per-tensor scales, as in the paper).",
        "A faithful reading of the paper does not reproduce its Table 2: our numbers match an independent",
        "implementation of the same method ('check', the method doc) and stay far below the paper's UDFC.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        fp = _find(rows, model, "fp", None, 0.0, None)
        out += [f"## {model} (FP {fp:.2f})", ""]
        if any(r["model"] == model and r["section"] == "table" for r in rows):
            out += [
                "| ratio | criterion | prune | nm | udfc | udfc 4b | drops: prune / nm / udfc / udfc 4b |"
                + (" paper (FP 93.88) prune / nm / udfc 4b | paper drops |" if model == "cifar_resnet56" else ""),
                "|---|---|---|---|---|---|---|" + ("---|---|" if model == "cifar_resnet56" else ""),
            ]
            for crit in ("l2", "l1"):
                for ratio in RATIOS:
                    v = [
                        _find(rows, model, m, crit, ratio, b)
                        for m, b in (("prune", None), ("nm", None), ("udfc", None), ("udfc", 4))
                    ]
                    if all(x is None for x in v):
                        continue
                    drops = " / ".join(_f(fp - x) if x is not None else "-" for x in v)
                    line = f"| {ratio:.0%} | {crit} | " + " | ".join(_f(x) for x in v) + f" | {drops} |"
                    if model == "cifar_resnet56":
                        k = 0 if crit == "l2" else 1
                        paper = [PAPER[(m, ratio)][k] for m in ("prune", "nm", "udfc4")]
                        line += " " + " / ".join(f"{p:.2f}" for p in paper) + " | "
                        line += " / ".join(f"{PAPER_FP - p:.2f}" for p in paper) + " |"
                    out.append(line)
            out.append("")
        if any(r["model"] == model and r["section"] == "quant" for r in rows):
            out += [
                "Quantization only (top-1):",
                "",
                "| bits | rtn | udfc | check rtn | check udfc |",
                "|---|---|---|---|---|",
            ]
            for b in range(2, 9):
                rtn, udfc = _find(rows, model, "rtn", "l2", 0.0, b), _find(rows, model, "udfc", "l2", 0.0, b)
                check = model == "cifar_resnet56" and n == 10000
                c_rtn = CHECK.get(("rtn", "l2", 0.0, b)) if check else None
                c_udfc = CHECK.get(("udfc", "l2", 0.0, b)) if check else None
                out.append(f"| {b} | {_f(rtn)} | {_f(udfc)} | {_f(c_rtn)} | {_f(c_udfc)} |")
            out.append("")
        if any(r["model"] == model and r["section"] == "grid" for r in rows):
            out += [
                "UDFC, pruning ratio x weight bits (top-1; paper Fig. 2 setting):",
                "",
                "| ratio | 4 | 5 | 6 | 7 | 8 |",
                "|---|---|---|---|---|---|",
            ]
            for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
                out.append(
                    f"| {ratio:.0%} | "
                    + " | ".join(_f(_find(rows, model, "udfc", "l2", ratio, b)) for b in range(4, 9))
                    + " |"
                )
            out.append("")
        if model == "cifar_resnet56" and n == 10000:
            checked = [(k, _find(rows, model, *k)) for k in CHECK if _find(rows, model, *k) is not None]
            if checked:
                worst = max(abs(v - CHECK[k]) for k, v in checked)
                out += [
                    f"Against the method doc's check numbers: {len(checked)} settings, largest difference "
                    f"{worst:.2f} points.",
                    "",
                ]
    return "\n".join(out)


def plot(rows, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return
    for model in dict.fromkeys(r["model"] for r in rows):
        fp = _find(rows, model, "fp", None, 0.0, None)
        if any(r["model"] == model and r["section"] == "table" for r in rows):
            fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
            for ax, crit in zip(axes, ("l2", "l1"), strict=True):
                for (m, b), label in (
                    ((("prune", None)), "prune"),
                    (("nm", None), "nm"),
                    (("udfc", None), "udfc"),
                    (("udfc", 4), "udfc 4-bit"),
                ):
                    ys = [_find(rows, model, m, crit, r, b) for r in RATIOS]
                    ax.plot([r * 100 for r in RATIOS], ys, marker="o", label=label)
                if model == "cifar_resnet56":
                    k = 0 if crit == "l2" else 1
                    ax.plot(
                        [r * 100 for r in RATIOS],
                        [PAPER[("udfc4", r)][k] - PAPER_FP + fp for r in RATIOS],
                        "k--",
                        label="paper udfc 4-bit (same drop)",
                    )
                ax.axhline(fp, color="grey", lw=0.8, label="FP")
                ax.set(title=f"{model}, {crit} criterion", xlabel="pruning ratio (%)", ylabel="top-1 (%)")
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / f"cifar10_{model}_ratio.png", dpi=110)
            plt.close(fig)
        if any(r["model"] == model and r["section"] == "grid" for r in rows):
            ratios, bits = (0.1, 0.2, 0.3, 0.4, 0.5), list(range(4, 9))
            grid = [[_find(rows, model, "udfc", "l2", r, b) or float("nan") for b in bits] for r in ratios]
            fig, ax = plt.subplots(figsize=(5.5, 4))
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(bits)), bits)
            ax.set_yticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
            ax.set(title=f"{model}: udfc top-1 (FP {fp:.1f})", xlabel="weight bits", ylabel="pruning ratio")
            fig.colorbar(im)
            fig.tight_layout()
            fig.savefig(out / f"cifar10_{model}_grid.png", dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
