"""How to find channel couplings: Torch-Pruning's dependency graph, torch.fx, or udfc_hub's function-mode trace.

    python benchmarks/tracing.py                 # the default model list (~3 min on 2 cores)
    python benchmarks/tracing.py --models a b c

For each model (random weights, its own input size): the time to build Torch-Pruning's ``DependencyGraph`` (the
autograd graph of one forward pass), to trace it with torch.fx (timm's leaf modules and wrapped functions), and
to run ``udfc_hub.adapters.trace_couplings`` (a ``TorchFunctionMode`` over one forward pass); whether each
succeeds; and, for every group udfc_hub finds, whether Torch-Pruning's pruning group for the same producer
touches exactly the same modules (producer, its norm, aligned modules, consumers). Writes
benchmarks/results/tracing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import timm
import torch
import torch.nn as nn

from udfc_hub.adapters import trace_couplings
from udfc_hub.profile import default_input_size

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MODELS = (
    "resnet50", "resnet26d", "seresnext26t_32x4d", "regnety_008", "efficientnet_b0", "mobilenetv3_large_100",
    "mobilenetv2_100", "densenet121", "ghostnet_100", "convnext_tiny", "vit_small_patch16_224", "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "mobilevit_s", "efficientvit_b1", "levit_128", "repvgg_a0", "hrnet_w18_small",
    "cait_xxs24_224", "xcit_tiny_12_p16_224",
)  # fmt: skip


def _dg(model, x):
    import torch_pruning as tp

    start = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return dg, time.perf_counter() - start


def _fx(model):
    import torch.fx as fx
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules

    leaves = tuple(get_notrace_modules())

    class Tracer(fx.Tracer):
        def __init__(self):
            super().__init__(autowrap_functions=tuple(get_notrace_functions()))

        def is_leaf_module(self, m, name):
            return isinstance(m, leaves) or super().is_leaf_module(m, name)

    start = time.perf_counter()
    Tracer().trace(model)
    return time.perf_counter() - start


def _dg_modules(dg, model, producer: str) -> set[str] | None:
    import torch_pruning as tp

    module = model.get_submodule(producer)
    fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
    names = {m: n for n, m in model.named_modules()}
    group = dg.get_pruning_group(module, fn, idxs=[0])
    return {names[dep.target.module] for dep, _ in group if dep.target.module in names}


def one(name: str) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(1, *default_input_size(model))
    row: dict = {"model": name, "params": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    try:
        spec = trace_couplings(model).spec
        row["udfc_s"] = round(time.perf_counter() - start, 3)
        row["groups"] = len(spec.groups)
    except Exception as e:  # noqa: BLE001
        row["udfc_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        spec = None
    try:
        row["fx_s"] = round(_fx(model), 3)
    except Exception as e:  # noqa: BLE001
        row["fx_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    try:
        dg, seconds = _dg(model, x)
        row["dg_s"] = round(seconds, 3)
    except Exception as e:  # noqa: BLE001
        row["dg_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        dg = None
    if spec is not None and dg is not None:
        agree, differ = 0, []
        for g in spec.groups:
            ours = {g.producer.name, *([g.producer.norm] if g.producer.norm else []), *g.aligned}
            ours |= {c.name for c in g.consumers}
            theirs = _dg_modules(dg, model, g.producer.name)
            if theirs == ours:
                agree += 1
            else:
                differ.append({"producer": g.producer.name, "only_udfc": sorted(ours - theirs),
                               "only_dg": sorted(theirs - ours)})  # fmt: skip
        row["agree_with_dg"] = agree
        row["differ"] = differ[:3]
    return row


def main() -> None:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        row = one(name)
        rows.append(row)
        print(json.dumps(row)[:300], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/tracing.py " + " ".join(sys.argv[1:])
    (RESULTS / "tracing.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Finding channel couplings: Torch-Pruning DependencyGraph vs torch.fx vs udfc_hub's trace",
        "",
        f"Command: `{command}` (random weights, each model's own input size, 1 thread)",
        "",
        "| model | params (M) | DG build (s) | fx trace (s) | udfc_hub trace (s) | udfc_hub groups "
        "| same modules as DG |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} | {r.get('dg_s', 'failed')} | {r.get('fx_s', 'failed')} | "
            f"{r.get('udfc_s', 'failed')} | {r.get('groups', '-')} | {r.get('agree_with_dg', '-')} |"
        )
    ok = {k: sum(1 for r in rows if f"{k}_s" in r) for k in ("dg", "fx", "udfc")}
    n = len(rows)
    lines += ["", f"Succeeded: DG {ok['dg']}/{n}, fx {ok['fx']}/{n}, udfc_hub {ok['udfc']}/{n}."]
    differ = [(r["model"], d) for r in rows for d in r.get("differ", [])]
    if differ:
        lines += ["", "Groups where the module sets differ (first three per model):", ""]
        lines += [f"- {m}: {d['producer']}: only udfc_hub {d['only_udfc']}, only DG {d['only_dg']}" for m, d in differ]
    (RESULTS / "tracing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
