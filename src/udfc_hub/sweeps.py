"""Sweeps: compress, evaluate and save a grid of (model x prune ratio x bits x method) cells, in-process or on Ray.

A sweep is a list of cells. Each cell compresses one base model with one ``CompressionConfig``, evaluates it
(top-1 / top-5 / agreement with the float model, whose predictions are computed once per model) and optionally
saves the artifact. Results go, as each cell finishes, to one JSON-lines table (``results.jsonl`` in the output
folder), keyed by the cell: a rerun with the same folder skips the cells that finished, so an interrupted sweep
loses at most the cells in flight. ``select`` then picks, per model, the smallest artifact within an accuracy
budget, and only those are pushed.

Engines: ``"sequential"`` (in this process, the default) and ``"ray"`` (``pip install "udfc-hub[ray]"``): a local
Ray runtime, or a cluster (``address="auto"`` / ``"ray://host:port"``). On Ray each model is loaded and its float
predictions computed by one task, which puts the model into the object store once; every cell of that model is a
task that reads it from there, with the CPUs (and memory) it declares. A cell whose worker dies is retried by Ray;
a cell that raises records its error and the sweep goes on. Both engines give the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import resource
import string
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .config import CompressionConfig
from .errors import InvalidArgumentError, UdfcError

__all__ = ["ENGINES", "TIMING_FIELDS", "ModelSource", "SweepResult", "read_results", "select", "sweep"]

ENGINES = ("sequential", "ray")
RESULTS_NAME = "results.jsonl"
DEFAULT_METHOD: str = next(f.default for f in dataclasses.fields(CompressionConfig) if f.name == "method")
DEFAULT_REPO_PATTERN = "{model}-udfc-p{prune}-w{bits}-{method}"
# fault injection for tests: "SUBSTRING:MARKER" kills the Ray worker running the first cell whose key contains
# SUBSTRING, once (MARKER is a file created just before, so the retry runs normally)
KILL_ONCE_ENV = "UDFC_SWEEP_KILL_ONCE"
GRID_FIELDS = ("prune_ratio", "bits", "method")  # the options a sweep varies; every other one is the same in all cells
# the fields of a row that say how long a cell took and where it ran, not what it computed
TIMING_FIELDS = ("compress_s", "eval_s", "cell_s", "peak_rss_mb", "worker", "traceback")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model to sweep: a timm name, ``hf-hub:`` / ``local-dir:`` source, and optionally a local weights file."""

    source: str
    checkpoint: str | None = None

    @classmethod
    def parse(cls, item: str | ModelSource | dict[str, Any]) -> ModelSource:
        """``"resnet34"``, ``"cifar_resnet56=path/to/resnet56.th"`` (weights from a file), a dict, or as is."""
        if isinstance(item, ModelSource):
            return item
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"source", "checkpoint"})
            if unknown or "source" not in item:
                raise InvalidArgumentError(
                    f"a model given as a dict takes the keys 'source' and 'checkpoint', got {sorted(item)}."
                )
            return cls(**item).checked()
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgumentError(
                f"models must be timm names, hf-hub:/local-dir: sources or NAME=CHECKPOINT strings, got {item!r}."
            )
        source, _, checkpoint = item.partition("=")
        return cls(source.strip(), checkpoint.strip() or None).checked()

    def checked(self) -> ModelSource:
        if not isinstance(self.source, str) or not self.source:
            raise InvalidArgumentError(f"model source must be a non-empty string, got {self.source!r}.")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise InvalidArgumentError(f"checkpoint {self.checkpoint} of {self.source} is not a file.")
        return self

    @property
    def label(self) -> str:
        """The model's name in the table and in repo names: the last part of the source, without prefix."""
        name = self.source.split(":", 1)[1] if self.source.startswith(("hf-hub:", "local-dir:")) else self.source
        return Path(name.rstrip("/")).name or name


@dataclasses.dataclass(frozen=True)
class Cell:
    model: ModelSource
    config: CompressionConfig

    @property
    def key(self) -> str:
        """Unique and stable: the model (with its weights file) and every compression option."""
        options = json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":"))
        weights = f"@{self.model.checkpoint}" if self.model.checkpoint else ""
        return f"{self.model.source}{weights}|{options}"

    @property
    def name(self) -> str:
        """A short readable name, e.g. ``cifar_resnet56-p30-w4-udfc+``: the artifact's folder name. Options other
        than the grid's that differ from their defaults add a short hash, so sweeps with other options that share
        an output folder never overwrite each other's artifacts."""
        c = self.config
        name = f"{self.model.label}-p{round(c.prune_ratio * 100)}-w{c.bits or 'fp'}-{c.method}"
        default = CompressionConfig().to_dict()
        # options that to_dict leaves out at their default (bit_widths, correlations, the activation ones) count
        # as differing whenever they are written
        extra = {k: v for k, v in c.to_dict().items() if k not in GRID_FIELDS and v != default.get(k)}
        if extra:
            name += "-" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:6]
        return name


@dataclasses.dataclass
class SweepResult:
    """The rows of every cell of the sweep (finished earlier or now), the selection, and the files written."""

    rows: list[dict[str, Any]]
    selected: list[dict[str, Any]]
    table: Path | None
    files: dict[str, Path]
    pushed: dict[str, str]
    seconds: float

    def __repr__(self) -> str:
        ok = sum(r["status"] == "ok" for r in self.rows)
        return (
            f"SweepResult({len(self.rows)} cells: {ok} ok, {len(self.rows) - ok} failed; "
            f"{len(self.selected)} selected; table={self.table})"
        )


def _as_list(name: str, value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list | tuple | set | range) else [value]
    if not values:
        raise InvalidArgumentError(f"{name} must not be empty.")
    return values


def plan(
    models: Iterable[str | ModelSource | dict[str, Any]],
    prune_ratios: Sequence[float] | float,
    bits: Sequence[int | None] | int | None,
    methods: Sequence[str] | str,
    options: dict[str, Any] | None,
) -> list[Cell]:
    """The cells of the grid, in order (model-major), every config validated before any work."""
    if isinstance(models, str | ModelSource | dict):
        models = [models]
    sources = [ModelSource.parse(m) for m in _as_list("models", list(models))]
    if len({s.label for s in sources}) != len(sources):
        raise InvalidArgumentError("two models share a name; sweep each model once.")
    options = dict(options or {})
    clash = sorted(set(options) & set(GRID_FIELDS))
    if clash:
        raise InvalidArgumentError(f"give {', '.join(clash)} as the sweep's own lists, not in options.")
    grid = itertools.product(
        _as_list("prune_ratios", prune_ratios), _as_list("bits", bits), _as_list("methods", methods)
    )
    # prune ratio 0 with float weights is the base model itself: its row is the reference of every other cell
    configs = [
        CompressionConfig.build(prune_ratio=r, bits=b, method=m, **options) for r, b, m in grid if r or b is not None
    ]
    if not configs:
        raise InvalidArgumentError("nothing to sweep: give prune ratios above 0 or bit widths (or both).")
    return [Cell(s, c) for s in sources for c in configs]


# --- one model, one cell: the work, the same in both engines -----------------------------------------------------


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def prepare_model(model: ModelSource, data: Any | None, batch_size: int = 64) -> tuple[Any, dict[str, Any] | None]:
    """Load ``model`` and, with ``data``, its float predictions and scores (once per model, not per cell)."""
    from .api import load_model
    from .evaluation import _check_labels, _scores, predict

    base = load_model(model.source, checkpoint=model.checkpoint).eval()
    if data is None:
        return base, None
    _check_labels(data, base)
    pred = predict(base, data, batch_size=batch_size)
    return base, {"pred": pred[:, 0].clone(), "scores": _scores(data, pred, None)}


def run_cell(
    cell: Cell,
    base: Any,
    reference: dict[str, Any] | None,
    data: Any | None,
    artifacts: Path | None,
    repo_id: str | None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Compress, evaluate and (with ``artifacts``) save one cell; returns its row. Errors become the row's error."""
    row = _row_head(cell)
    start = time.perf_counter()
    try:
        row.update(_run_cell(cell, base, reference, data, artifacts, repo_id, batch_size))
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (a failing cell records its error; the sweep goes on)
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    row["cell_s"] = round(time.perf_counter() - start, 3)
    row["peak_rss_mb"] = _peak_rss_mb()
    row["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    return row


def _row_head(cell: Cell) -> dict[str, Any]:
    c = cell.config
    return {
        "key": cell.key,
        "cell": cell.name,
        "model": cell.model.label,
        "source": cell.model.source,
        "checkpoint": cell.model.checkpoint,
        "method": c.method,
        "prune_ratio": c.prune_ratio,
        "bits": c.bits,
        "config": c.to_dict(),
        "status": "pending",
        "error": None,
    }


def _run_cell(cell, base, reference, data, artifacts, repo_id, batch_size) -> dict[str, Any]:
    from .engine import compress
    from .evaluation import _scores, predict
    from .hub.artifact import artifact_size, save_pretrained
    from .profile import state_bytes

    t0 = time.perf_counter()
    result = compress(base, cell.config)
    out: dict[str, Any] = {
        "compress_s": round(time.perf_counter() - t0, 3),
        "params_before": result.report.before.params,
        "params": result.report.after.params,
        "macs_before": result.report.before.macs,
        "macs": result.report.after.macs,
        "float_bytes": state_bytes(base),
    }
    accuracy = None
    if data is not None:
        t0 = time.perf_counter()
        pred = predict(result.model, data, batch_size=batch_size)
        scores = _scores(data, pred, reference["pred"] if reference else None)
        before = reference["scores"] if reference else {}
        out.update(
            top1=scores["top1"],
            top5=scores["top5"],
            agreement=scores["agreement"],
            base_top1=before.get("top1"),
            base_top5=before.get("top5"),
            drop=round(before["top1"] - scores["top1"], 2) if before else None,
            n=scores["n"],
            dataset=scores["dataset"],
            eval_s=round(time.perf_counter() - t0, 3),
        )
        accuracy = {"dataset": scores["dataset"], "n": scores["n"], "top1": scores["top1"], "top5": scores["top5"]}
        if data.of:  # evaluated on a subset (limit=N): the card says so
            accuracy["of"] = data.of
        if before:
            accuracy.update(base_top1=before["top1"], base_top5=before["top5"])
    if artifacts is None:  # the size the file would have, packed in memory; a saved file is measured instead
        out["file_bytes"] = artifact_size(result)
    else:
        folder = save_pretrained(result, artifacts / cell.name, overwrite=True, accuracy=accuracy, repo_id=repo_id)
        out["folder"] = str(folder)
        out["file_bytes"] = (folder / "model.safetensors").stat().st_size
        out["repo_id"] = repo_id
    return out


# --- engines ----------------------------------------------------------------------------------------------------


def _run_sequential(todo: dict[ModelSource, list[Cell]], data, artifacts, repos, on_row, batch_size: int) -> None:
    for model, cells in todo.items():
        try:
            base, reference = prepare_model(model, data, batch_size)
        except Exception as e:  # noqa: BLE001  (a model that cannot load fails its cells, not the sweep)
            for cell in cells:
                on_row(_failed(cell, e))
            continue
        for cell in cells:
            on_row(run_cell(cell, base, reference, data, artifacts, repos.get(cell.key), batch_size))
        del base


def _failed(cell: Cell, e: BaseException) -> dict[str, Any]:
    row = _row_head(cell)
    row.update(status="error", error=f"{type(e).__name__}: {e}")
    return row


def _ray_module():
    try:
        import ray
    except ImportError:
        raise InvalidArgumentError(
            'engine="ray" needs Ray: pip install "udfc-hub[ray]" (or use the default engine="sequential").'
        ) from None
    return ray


def _worker_setup() -> None:
    """In a Ray worker: as many torch threads as the task declared CPUs, and udfc-hub's models registered."""
    import torch

    from . import register

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    register()


def _ray_prepare(model: ModelSource, data, batch_size: int):
    _worker_setup()
    return prepare_model(model, data, batch_size)


def _ray_cell(cell: Cell, base, reference, data, artifacts, repo_id, batch_size: int):
    _worker_setup()
    _maybe_die(cell.key)
    return run_cell(cell, base, reference, data, artifacts, repo_id, batch_size)


def _maybe_die(key: str) -> None:
    """The test hook of ``KILL_ONCE_ENV``: this worker process dies (as a crashed or preempted one would)."""
    spec = os.environ.get(KILL_ONCE_ENV)
    if not spec:
        return
    needle, _, marker = spec.partition(":")
    if needle in key and marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def _ray_init(ray, address: str | None, cpus_per_task: float) -> bool:
    """Start (or join, with ``address``) a Ray runtime unless one is up; True if this call started it."""
    if ray.is_initialized():
        return False
    env = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_task)))}  # one torch thread pool per declared CPU
    if os.environ.get(KILL_ONCE_ENV):
        env[KILL_ONCE_ENV] = os.environ[KILL_ONCE_ENV]
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "runtime_env": {"env_vars": env}}
    if address:
        init["address"] = address
    ray.init(**init)
    return True


def _run_ray(
    todo: dict[ModelSource, list[Cell]],
    data,
    artifacts,
    repos,
    on_row,
    batch_size: int,
    *,
    address: str | None,
    cpus_per_task: float,
    memory_per_task: int | None,
    max_retries: int,
) -> None:
    ray = _ray_module()
    started_here = _ray_init(ray, address, cpus_per_task)
    resources: dict[str, Any] = {"num_cpus": cpus_per_task}
    if memory_per_task:
        resources["memory"] = memory_per_task
    prepare = ray.remote(num_returns=2, max_retries=max_retries, **resources)(_ray_prepare)
    cell_task = ray.remote(max_retries=max_retries, **resources)(_ray_cell)
    data_ref = ray.put(data) if data is not None else None
    pending: dict[Any, Cell] = {}
    try:
        for model, cells in todo.items():
            base_ref, reference_ref = prepare.remote(model, data_ref, batch_size)  # into the object store once
            for cell in cells:
                repo = repos.get(cell.key)
                ref = cell_task.remote(cell, base_ref, reference_ref, data_ref, artifacts, repo, batch_size)
                pending[ref] = cell
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as e:  # noqa: BLE001  (the model failed to load, or the retries ran out)
                    row = _failed(cell, getattr(e, "cause", None) or e)
                on_row(row)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


# --- the table --------------------------------------------------------------------------------------------------


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results table, the last row of each key (a rerun's row replaces an error row)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    if not path.is_file():
        raise InvalidArgumentError(f"{path} is not a file: a sweep's results table is a JSON-lines file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UdfcError(f"cannot read the sweep table {path} ({type(e).__name__}: {e}).") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the line a killed driver was writing
                break
            raise UdfcError(f"{path} line {n} is not JSON: not a udfc-hub sweep table.") from None
        _check_row(row, f"{path} line {n}")
        rows[row["key"]] = row
    return list(rows.values())


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("key"), str):
        raise UdfcError(f"{where} has no cell key: not a udfc-hub sweep table.")
    for field in _NUMBER_FIELDS:
        value = row.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UdfcError(
                f"{where}: {field!r} is {value!r}, not a number; the table was edited. Delete that line (its cell "
                "runs again) or restore the file."
            )


# the numbers a row may hold (null where not measured); select, the markdown table and the plot compute with them
_NUMBER_FIELDS = (
    "drop",
    "top1",
    "top5",
    "base_top1",
    "base_top5",
    "agreement",
    "file_bytes",
    "float_bytes",
    "params",
    "macs",
)


def _drop_torn_line(table: Path) -> None:
    """A driver killed mid-write leaves a last line without its newline: cut it off before appending, or the next
    row would be written onto it (its cell runs again)."""
    if not table.is_file() or table.stat().st_size == 0:
        return
    with open(table, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)


class _Sink:
    """Where rows arrive: the rows by key, the table (one line per row, flushed and synced at once, so a crash
    loses at most the line being written), the progress bar with its ETA, and the caller's callback."""

    def __init__(self, rows: dict, table: Path | None, total: int, done: int, progress: bool, on_row: Callable | None):
        self.rows, self.on_row = rows, on_row
        self._file = None
        if table is not None:
            table.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_line(table)
            self._file = open(table, "a", encoding="utf-8")  # noqa: SIM115  (kept open for the sweep)
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=done, desc="sweep", unit="cell")

    def arrived(self, row: dict[str, Any]) -> None:
        self.rows[row["key"]] = row
        if self._file is not None:
            self._file.write(json.dumps(row, default=str) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{row['cell']} {row['status']}", refresh=False)
        if self.on_row is not None:
            self.on_row(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._bar is not None:
            self._bar.close()


# --- choosing what to publish -----------------------------------------------------------------------------------


def select(rows: Iterable[dict[str, Any]], max_drop: float) -> list[dict[str, Any]]:
    """Per model, the smallest artifact whose top-1 drop from the float model is at most ``max_drop`` points.

    Ties in size go to the higher top-1. Models with no cell within the budget get none. Needs evaluated rows.
    """
    if not isinstance(max_drop, int | float) or isinstance(max_drop, bool) or not math.isfinite(max_drop):
        raise InvalidArgumentError(f"max_drop must be a number of top-1 points, e.g. 1.0; got {max_drop!r}.")
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        if row.get("drop") is None:
            raise InvalidArgumentError("selecting by accuracy needs evaluated cells: give the sweep eval data.")
        if row["drop"] > max_drop:
            continue
        cur = best.get(row["model"])
        if cur is None or (row["file_bytes"], -row["top1"]) < (cur["file_bytes"], -cur["top1"]):
            best[row["model"]] = row
    return sorted(best.values(), key=lambda r: r["model"])


def markdown_table(rows: list[dict[str, Any]], selected: list[dict[str, Any]]) -> str:
    chosen = {r["key"] for r in selected}
    lines = [
        "| model | method | prune | bits | params | file | top-1 | drop | agreement | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    from .units import format_bytes, format_count

    def num(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    for r in sorted(rows, key=lambda r: (r["model"], r["method"], r["prune_ratio"], r["bits"] or 99)):
        status = "selected" if r["key"] in chosen else ("ok" if r["status"] == "ok" else f"error: {r['error']}")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['prune_ratio']:.0%} | {r['bits'] or 'float'} | "
            f"{format_count(r['params'], 'M') if r.get('params') else '-'} | "
            f"{format_bytes(r['file_bytes']) if r.get('file_bytes') else '-'} | {num(r.get('top1'))} | "
            f"{num(r.get('drop'))} | {num(r.get('agreement'))} | {status.replace('|', '/')[:120]} |"
        )
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[dict[str, Any]], selected: list[dict[str, Any]], path: Path) -> Path | None:
    """Top-1 against artifact size, one line per model (its Pareto front), the selected cells circled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r["status"] == "ok" and r.get("top1") is not None]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in sorted({r["model"] for r in ok}):
        mine = [r for r in ok if r["model"] == model]
        pts = sorted(((r["file_bytes"] / 1e6, r["top1"]) for r in mine), key=lambda p: (p[0], -p[1]))
        front, best = [], -math.inf
        for size, top1 in pts:  # smallest first: a point is on the front if it beats every smaller one
            if top1 > best:
                front.append((size, top1))
                best = top1
        (line,) = ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", label=model)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.4, color=line.get_color())
        base = mine[0]
        if base.get("base_top1") is not None and base.get("float_bytes"):
            ax.scatter([base["float_bytes"] / 1e6], [base["base_top1"]], marker="*", s=120, color=line.get_color())
    for r in selected:
        ax.scatter([r["file_bytes"] / 1e6], [r["top1"]], s=140, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (MB, model.safetensors)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("top-1 against size (lines: Pareto fronts, stars: float models, circles: selected)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# --- the entry point --------------------------------------------------------------------------------------------


def repo_name(pattern: str, cell: Cell, org: str) -> str:
    c = cell.config
    fields = {
        "model": cell.model.label,
        "prune": round(c.prune_ratio * 100),
        "bits": c.bits or "fp",
        "method": c.method.replace("+", "plus"),
    }
    check_repo_pattern(pattern)
    try:
        name = pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidArgumentError(
            f"repo pattern {pattern!r} is not valid ({e}); it may use {{model}}, {{prune}}, {{bits}}, {{method}}."
        ) from None
    return f"{org}/{re.sub(r'[^A-Za-z0-9._-]', '-', name)}"


REPO_FIELDS = ("model", "prune", "bits", "method")


def check_repo_pattern(pattern: Any) -> str:
    """A repo-name pattern uses only the plain fields ``{model}``, ``{prune}``, ``{bits}``, ``{method}`` (no
    attribute or index lookups, no conversions, no nested fields: str.format would evaluate them)."""
    accepted = ", ".join(f"{{{f}}}" for f in REPO_FIELDS)
    if not isinstance(pattern, str) or not pattern:
        raise InvalidArgumentError(f"repo pattern must be a non-empty string using {accepted}; got {pattern!r}.")
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as e:
        raise InvalidArgumentError(f"repo pattern {pattern!r} is not valid ({e}); it may use {accepted}.") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in REPO_FIELDS or conversion or (spec and "{" in spec):
            raise InvalidArgumentError(
                f"repo pattern {pattern!r} uses {{{field}{'!' + conversion if conversion else ''}}}; it may use only "
                f"{accepted}, each plain or with a format spec such as {{prune:02d}}."
            )
    return pattern


def sweep(
    models: Iterable[str | ModelSource | dict[str, Any]] | str,
    *,
    prune_ratios: Sequence[float] | float = (0.0,),
    bits: Sequence[int | None] | int | None = (None,),
    methods: Sequence[str] | str = (DEFAULT_METHOD,),
    options: dict[str, Any] | None = None,
    data: str | os.PathLike | Any | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    out: str | os.PathLike | None = None,
    save: bool = False,
    max_drop: float | None = None,
    push_org: str | None = None,
    repo_pattern: str = DEFAULT_REPO_PATTERN,
    private: bool = False,
    token: str | None = None,
    engine: str = "sequential",
    address: str | None = None,
    cpus_per_task: float = 1,
    memory_per_task: int | None = None,
    max_retries: int = 3,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Compress, evaluate and optionally save and publish every cell of models x prune_ratios x bits x methods.

    Args:
        models: timm names, ``hf-hub:`` / ``local-dir:`` sources, or ``"NAME=CHECKPOINT"`` (weights from a file).
        prune_ratios: the grid's prune ratios (a number or a sequence).
        bits: the grid's weight bits (``None``: float weights).
        methods: the grid's methods.
        options: any other ``compress`` option, the same for every cell.
        data: evaluation images (see ``udfc_hub.evaluate``); ``limit=N`` takes N evenly spaced images;
            ``batch_size`` images per forward pass (activation memory grows with it).
        out: folder of the results table (``results.jsonl``, appended as cells finish; a rerun skips the cells
            already there), the markdown table and the Pareto plot; with ``save=True`` also ``artifacts/<cell>/``.
        max_drop: select, per model, the smallest artifact within ``max_drop`` top-1 points of the float model.
        push_org: publish the selected cells to ``{push_org}/{repo_pattern}`` (needs ``out``, ``data`` and
            ``max_drop``); the pattern may use ``{model}``, ``{prune}``, ``{bits}``, ``{method}``.
        engine: ``"sequential"`` (this process) or ``"ray"`` (``address``: None starts a local Ray runtime,
            ``"auto"`` or ``"ray://host:port"`` joins a cluster); each Ray task declares ``cpus_per_task`` CPUs
            and ``memory_per_task`` bytes; a task whose worker dies is retried ``max_retries`` times.
        on_row: called with each row as it arrives.

    Example (needs images, so not run as a doctest)::

        udfc_hub.sweep(["resnet18", "resnet50"], prune_ratios=[0, 0.3], bits=[4, 6], data="imagenet_sample/",
                       out="sweep-out", max_drop=1.0, engine="ray")
    """
    start = time.perf_counter()
    cells = plan(models, prune_ratios, bits, methods, options)
    _check_engine(engine, cpus_per_task, memory_per_task)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    _check_outputs(out, save, data, max_drop, push_org)
    repos: dict[str, str] = {}
    if push_org is not None:
        repos, token = _plan_push(cells, push_org, repo_pattern, token)
        save = True
    eval_data = None
    if data is not None:
        from .evaluation import _resolve

        eval_data = _resolve(data, limit)
    out_dir = Path(out) if out is not None else None
    table = out_dir / RESULTS_NAME if out_dir is not None else None
    rows = _finished_rows(out_dir, need_folder=save)
    todo: dict[ModelSource, list[Cell]] = {}
    for cell in cells:
        if cell.key not in rows:
            todo.setdefault(cell.model, []).append(cell)
    artifacts = (out_dir / "artifacts") if save and out_dir is not None else None

    sink = _Sink(rows, table, len(cells), len(cells) - sum(map(len, todo.values())), progress, on_row)
    try:
        if engine == "ray":
            ray_options = dict(cpus_per_task=cpus_per_task, memory_per_task=memory_per_task, max_retries=max_retries)
            _run_ray(todo, eval_data, artifacts, repos, sink.arrived, batch_size, address=address, **ray_options)
        else:
            _run_sequential(todo, eval_data, artifacts, repos, sink.arrived, batch_size)
    finally:
        sink.close()
    ordered = [rows[c.key] for c in cells if c.key in rows]
    selected = select(ordered, max_drop) if max_drop is not None else []
    files = _write_reports(out_dir, ordered, selected)
    pushed: dict[str, str] = {}
    if push_org is not None:
        from .hub.publish import push

        for row in selected:
            pushed[row["key"]] = push(row["folder"], repos[row["key"]], private=private, token=token)
    return SweepResult(ordered, selected, table, files, pushed, round(time.perf_counter() - start, 2))


def _check_engine(engine: str, cpus_per_task: Any, memory_per_task: Any) -> None:
    if engine not in ENGINES:
        raise InvalidArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    if not isinstance(cpus_per_task, int | float) or isinstance(cpus_per_task, bool) or not cpus_per_task > 0:
        raise InvalidArgumentError(f"cpus_per_task must be a positive number, got {cpus_per_task!r}.")
    if memory_per_task is not None and (not isinstance(memory_per_task, int) or memory_per_task <= 0):
        raise InvalidArgumentError(f"memory_per_task must be a positive number of bytes, got {memory_per_task!r}.")
    if engine == "ray":
        _ray_module()  # a missing extra is an error before any work


def _check_outputs(out: Any, save: bool, data: Any, max_drop: Any, push_org: str | None) -> None:
    if max_drop is not None:
        select([], max_drop)  # validates the number
    if out is not None:
        _check_out_folder(Path(out))
    if (save or push_org) and out is None:
        raise InvalidArgumentError("saving or pushing artifacts needs an output folder (out=...).")
    if push_org is not None and (data is None or max_drop is None):
        raise InvalidArgumentError("push_org publishes the selected cells: give data=... and max_drop=... too.")


def _check_out_folder(out: Path) -> None:
    """Before any work: ``out`` is a writable folder, or can be made in a writable one; its table is a file."""
    if not str(out):
        raise InvalidArgumentError("out must be a folder path, e.g. 'sweep-out'; got an empty string.")
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out {out} exists and is not a folder.")
    missing = []
    existing = out
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"cannot write the sweep's results in {out}: {existing} is not a writable folder.")
    try:  # the folder is made for real (some file systems refuse what access() allows), then left as it was
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgumentError(
            f"cannot write the sweep's results in {out}: {existing} is not a writable folder ({e.strerror})."
        ) from None
    for folder in missing:
        folder.rmdir()
    table = out / RESULTS_NAME
    if table.exists() and not table.is_file():
        raise InvalidArgumentError(f"{table} is not a file: a sweep's results table is a JSON-lines file.")


def _plan_push(cells: list[Cell], org: str, pattern: str, token: str | None) -> tuple[dict[str, str], str]:
    """Every cell's repo id (checked) and the token, before any work."""
    from .hub.publish import check_repo_id, resolve_token

    repos = {c.key: repo_name(pattern, c, org) for c in cells}
    for repo in repos.values():
        check_repo_id(repo)
    return repos, resolve_token(token)


def _finished_rows(out_dir: Path | None, need_folder: bool) -> dict[str, dict[str, Any]]:
    """The rows of the cells an earlier run of this sweep finished (errors are run again; with ``need_folder``,
    so are cells whose artifact folder is not there, e.g. from an earlier run that did not save)."""
    if out_dir is None:
        return {}
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"out {out_dir} exists and is not a folder.")
    rows = [r for r in read_results(out_dir / RESULTS_NAME) if r.get("status") == "ok"]
    if need_folder:
        rows = [r for r in rows if r.get("folder") and (Path(r["folder"]) / "model.safetensors").is_file()]
    return {r["key"]: r for r in rows}


def _write_reports(out_dir: Path | None, rows: list[dict[str, Any]], selected: list[dict[str, Any]]) -> dict:
    if out_dir is None:
        return {}
    files = {"table_md": _write_text(out_dir / "results.md", markdown_table(rows, selected))}
    plot = pareto_plot(rows, selected, out_dir / "pareto.png")
    if plot is not None:
        files["pareto"] = plot
    return files
