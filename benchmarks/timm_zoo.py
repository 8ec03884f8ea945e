"""Every architecture of timm's pretrained zoo through udfc_hub: compress, save, reload, compare logits.

    python benchmarks/timm_zoo.py --budget 30e6                 # all architectures up to 30 M parameters
    python benchmarks/timm_zoo.py --budget 30e6 --every 4       # a quarter of them (every 4th name)
    python benchmarks/timm_zoo.py --engine ray --address auto   # the same on a Ray cluster
    python benchmarks/timm_zoo.py --report                      # the tables again from what has run

For each name of ``timm.list_models(pretrained=True)`` (the ``.tag`` dropped): count its parameters on the meta
device (over ``--budget``: skipped, and counted), build it with random weights, compress it (udfc+, 30 % of each
prunable group, 6-bit weights), save it, reload it with stock ``timm.create_model("local-dir:...")`` and compare
logits on a random batch. A row records: created, how its couplings were found (hand-written adapter or traced),
prunable groups (closed form or not), quantized layers, groups pruned with compensation, whether the couplings are
exact (``udfc_hub.adapters.removal_error``: removing 40 % of every group's channels computes what zeroing their
consumer columns computes), the round trip's max |logit difference|, time, or the stage and error that stopped it.

Resumable: each finished model is one line of ``--state`` (default /tmp/udfc-timm-zoo.jsonl); a rerun skips them.
Workers are separate processes (``--workers``; each recycled after 50 models) or Ray tasks (``--engine ray``,
the sweep's scale-out engine). Writes benchmarks/results/timm_zoo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOLERANCE = 1e-4
COUPLING_TOLERANCE = 1e-4  # relative: removing a group's channels vs zeroing their consumer columns


def architectures() -> list[str]:
    import timm

    return sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)})


def count_params(name: str) -> int:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters())


def _timeout(signum, frame):
    raise TimeoutError("over the per-model time limit")


def run_one(args: tuple[str, float, int]) -> dict:
    """One architecture, in a worker process."""
    name, budget, limit = args
    import timm
    import torch

    import udfc_hub
    from udfc_hub.adapters import removal_error
    from udfc_hub.profile import default_input_size

    torch.set_num_threads(1)
    row: dict = {"model": name, "family": _family(name)}
    start = time.perf_counter()
    stage = "count"
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(limit)
    try:
        row["params"] = count_params(name)
        if row["params"] > budget:
            row["skipped"] = "over the parameter budget"
            return row
        stage = "create"
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        row["created"] = True
        size = default_input_size(model)
        row["input"] = list(size)
        stage = "compress"
        result = udfc_hub.compress(model, prune_ratio=0.3, bits=6)
        spec = result.spec
        row["adapter"] = "traced" if spec.family.startswith("traced") else "hand-written"
        row["groups"] = len(spec.groups)
        row["closed_form_groups"] = sum(g.closed_form for g in spec.groups)
        row["quantized_layers"] = len(result.quantized)
        row["compensated"] = sum(1 for r in result.report.pruned_layers if r.solver is not None)
        row["params_after"] = result.report.after.params
        row["notes"] = list(result.report.notes)[:4]
        stage = "couplings"
        row["removal_error"] = removal_error(model, spec, size) if spec.groups else 0.0
        row["couplings_exact"] = row["removal_error"] <= COUPLING_TOLERANCE
        stage = "save"
        with tempfile.TemporaryDirectory() as tmp:
            udfc_hub.save_pretrained(result, Path(tmp) / "m")
            stage = "reload"
            loaded = timm.create_model(f"local-dir:{Path(tmp) / 'm'}", pretrained=True).eval()
            stage = "compare"
            x = torch.randn(2, *size)
            with torch.no_grad():
                a, b = result.model(x), loaded(x)
            row["max_diff"] = float((a - b).abs().max())
        row["round_trip"] = row["max_diff"] <= TOLERANCE
    except BaseException as e:  # noqa: BLE001 - every failure is a row
        row["failed"] = stage
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.alarm(0)
        row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _family(name: str) -> str:
    import timm.models._registry as registry

    module = registry._model_to_module.get(name)
    return module or re.match(r"[a-z]+", name).group(0)


def _pool(engine: str, workers: int, address: str | None):
    if engine == "ray":
        from ray.util.multiprocessing import Pool

        return Pool(processes=workers, ray_address=address)
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=50)


def read_state(path: Path) -> dict[str, dict]:
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line
            rows[row["model"]] = row
    return rows


def summarise(rows: list[dict], budget: float) -> dict:
    # rows run under a larger budget count as skipped under this one (the tables always follow --budget)
    rows = [_within(r, budget) for r in rows]
    created = [r for r in rows if r.get("created")]
    total = {
        "architectures": len(rows),
        "skipped_over_budget": sum(1 for r in rows if r.get("skipped")),
        "created": len(created),
        "quantized": sum(1 for r in created if r.get("quantized_layers")),
        "compensated": sum(1 for r in created if r.get("compensated")),
        "round_trip": sum(1 for r in created if r.get("round_trip")),
        "traced": sum(1 for r in created if r.get("adapter") == "traced"),
        "couplings_exact": sum(1 for r in created if r.get("couplings_exact")),
        "failed": sum(1 for r in rows if r.get("failed")),
    }
    total["round_trip_pct"] = 100 * total["round_trip"] / max(1, total["created"])
    total["compensated_pct"] = 100 * total["compensated"] / max(1, total["created"])
    by_family: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        c = by_family[r["family"]]
        c["architectures"] += 1
        for key in ("created", "round_trip", "couplings_exact"):
            c[key] += bool(r.get(key))
        c["skipped"] += bool(r.get("skipped"))
        c["quantized"] += bool(r.get("quantized_layers"))
        c["compensated"] += bool(r.get("compensated"))
        c["failed"] += bool(r.get("failed"))
    failures = Counter(f"{r['failed']}: {_reason(r['error'])}" for r in rows if r.get("failed"))
    return {"budget": budget, "total": total, "by_family": by_family, "failures": failures}


def _within(row: dict, budget: float) -> dict:
    if row.get("params", 0) <= budget or row.get("skipped"):
        return row
    return {"model": row["model"], "family": row["family"], "params": row["params"], "skipped": "over the budget"}


def _reason(error: str) -> str:
    return re.sub(r"\d+", "N", error.split(". ")[0])[:140]


def write_report(rows: list[dict], budget: float, command: str) -> None:
    s = summarise(rows, budget)
    rows = [_within(r, budget) for r in rows]
    t = s["total"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "timm_zoo.json").write_text(
        json.dumps({"command": command, "summary": {**s, "by_family": dict(s["by_family"])}, "rows": rows}, indent=1)
        + "\n"
    )
    lines = [
        "# timm's pretrained zoo through udfc_hub (30 % + 6-bit udfc+, random weights)",
        "",
        f"Command: `{command}`",
        "",
        f"Architectures: {t['architectures']}; over the {budget / 1e6:.0f} M-parameter budget and skipped: "
        f"{t['skipped_over_budget']}; created: {t['created']}.",
        "",
        "| | count | % of created |",
        "| --- | ---: | ---: |",
    ]
    for key, label in (
        ("created", "created"),
        ("quantized", "quantized (at least one layer)"),
        ("compensated", "pruned with compensation (at least one group)"),
        ("round_trip", f"round trip through local-dir:, max abs logit diff <= {TOLERANCE:g}"),
        ("traced", "couplings traced (no hand-written adapter)"),
        ("couplings_exact", f"couplings exact (removing == zeroing, relative diff <= {COUPLING_TOLERANCE:g})"),
        ("failed", "failed"),
    ):
        lines.append(f"| {label} | {t[key]} | {100 * t[key] / max(1, t['created']):.1f} |")
    lines += [
        "",
        f"Targets: round trip >= 90 % of created: **{t['round_trip_pct']:.1f} %** "
        f"({'met' if t['round_trip_pct'] >= 90 else 'missed'}); at least one compensated group >= 60 %: "
        f"**{t['compensated_pct']:.1f} %** ({'met' if t['compensated_pct'] >= 60 else 'missed'}).",
        "",
        "## Failures by reason",
        "",
        "| stage: reason | models |",
        "| --- | ---: |",
        *(f"| {reason.replace('|', '/')} | {n} |" for reason, n in s["failures"].most_common()),
        "",
        "## By family (timm module)",
        "",
        "| family | architectures | skipped | created | quantized | compensated | couplings exact | round trip "
        "| failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fam, c in sorted(s["by_family"].items()):
        lines.append(
            f"| {fam} | {c['architectures']} | {c['skipped']} | {c['created']} | {c['quantized']} | "
            f"{c['compensated']} | {c['couplings_exact']} | {c['round_trip']} | {c['failed']} |"
        )
    (RESULTS / "timm_zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:16]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=30e6, help="skip architectures with more parameters")
    p.add_argument("--every", type=int, default=1, help="every k-th architecture name only")
    p.add_argument("--models", nargs="*", help="these architectures instead of the zoo")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--engine", choices=("process", "ray"), default="process")
    p.add_argument("--address", help="Ray cluster address (engine ray)")
    p.add_argument("--limit", type=int, default=600, help="seconds allowed per model")
    p.add_argument("--state", type=Path, default=Path(tempfile.gettempdir()) / "udfc-timm-zoo.jsonl")
    p.add_argument("--report", action="store_true", help="only write the tables from --state")
    args = p.parse_args()
    command = "python benchmarks/timm_zoo.py " + " ".join(sys.argv[1:])
    names = args.models or architectures()[:: args.every]
    done = read_state(args.state)
    if not args.report:
        todo = [n for n in names if n not in done]
        random.Random(0).shuffle(todo)  # a run stopped early still samples every family (--report then says so)
        print(f"{len(names)} architectures, {len(todo)} to run, {args.workers} worker(s), engine {args.engine}")
        with _pool(args.engine, args.workers, args.address) as pool, args.state.open("a") as state:
            for i, row in enumerate(pool.imap_unordered(run_one, [(n, args.budget, args.limit) for n in todo]), 1):
                state.write(json.dumps(row) + "\n")
                state.flush()
                os.fsync(state.fileno())
                done[row["model"]] = row
                status = row.get("skipped") or row.get("error") or f"diff {row.get('max_diff', float('nan')):.1e}"
                print(f"[{i}/{len(todo)}] {row['model']}: {status} ({row['seconds']} s)", flush=True)
    rows = [done[n] for n in names if n in done]
    write_report(rows, args.budget, command)


if __name__ == "__main__":
    main()
