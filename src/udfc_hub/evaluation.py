"""Top-1 / top-5 accuracy of a model on real images, and top-1 agreement with a reference model.

Accepted ``data``: an ``.npz`` with ``x`` uint8 (N, H, W, 3) RGB and ``y`` int labels; a folder with a
``labels.tsv`` (columns ``file`` and ``class_index``; files beside it or in ``images/``); or an ImageFolder tree
(one sub-folder per class, classes sorted by name). Preprocessing is the model's own timm data config (resize,
crop, interpolation, mean, std); ``data_config`` overrides any of its keys.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .errors import InvalidArgumentError, UdfcError

__all__ = ["compare_accuracy", "evaluate", "predict", "load_eval_data"]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
_ACCEPTED = (
    "an .npz with x (N, H, W, 3) uint8 and y labels, a folder with labels.tsv (file, class_index), "
    "or an ImageFolder tree (one sub-folder per class)"
)


class EvalData:
    """Images (a uint8 array or file paths) with integer labels, and a short name for reports."""

    def __init__(
        self,
        name: str,
        labels: np.ndarray,
        array: np.ndarray | None = None,
        files: list[Path] | None = None,
        of: int | None = None,
    ):
        self.name, self.labels, self.array, self.files = name, labels, array, files
        self.of = of  # a subset: the number of images of the whole data set

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> EvalData:
        """``n`` evenly spaced images (deterministic; data sets sorted by class keep every class)."""
        if n >= len(self):
            return self
        idx = np.linspace(0, len(self) - 1, n).round().astype(np.int64)
        return EvalData(
            self.name,
            self.labels[idx],
            array=None if self.array is None else self.array[idx],
            files=None if self.files is None else [self.files[i] for i in idx],
            of=self.of or len(self),
        )

    def image(self, i: int) -> Image.Image:
        if self.array is not None:
            return Image.fromarray(self.array[i])
        with Image.open(self.files[i]) as img:
            return img.convert("RGB")


def load_eval_data(data: str | os.PathLike) -> EvalData:
    """Read ``data`` (see the module docstring) without decoding any image yet."""
    path = Path(data)
    if not path.exists():
        raise InvalidArgumentError(f"data path {path} does not exist; accepted: {_ACCEPTED}.")
    if path.is_file():
        return _load_npz(path)
    if (path / "labels.tsv").is_file():
        return _load_tsv(path)
    return _load_image_folder(path)


def _load_npz(path: Path) -> EvalData:
    if path.suffix != ".npz":
        raise InvalidArgumentError(f"data file {path} is not an .npz; accepted: {_ACCEPTED}.")
    with np.load(path) as npz:
        if "x" not in npz or "y" not in npz:
            raise InvalidArgumentError(f"{path} lacks arrays 'x' and 'y' (has {sorted(npz.files)}).")
        x, y = npz["x"], npz["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
        raise InvalidArgumentError(
            f"{path}: x must be uint8 (N, H, W, 3) with one label per image; got x {x.dtype} {x.shape}, y {y.shape}."
        )
    return EvalData(path.stem, y.astype(np.int64), array=x)


def _load_tsv(path: Path) -> EvalData:
    """A folder with ``labels.tsv`` (columns ``file``, ``class_index``); files must lie inside the folder."""
    tsv = path / "labels.tsv"
    root = path.resolve()
    files, labels = [], []
    with tsv.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
            raise InvalidArgumentError(f"{tsv} needs the columns 'file' and 'class_index'.")
        for row in reader:
            candidates = (path / row["file"], path / "images" / row["file"])
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InvalidArgumentError(
                    f"{tsv} lists {row['file']}, which is neither in {path} nor in {path / 'images'}."
                )
            if not found.resolve().is_relative_to(root):
                raise InvalidArgumentError(
                    f"{tsv} lists {row['file']}, which lies outside {path}; only files inside the folder are read."
                )
            files.append(found)
            labels.append(int(row["class_index"]))
    return EvalData(path.name, np.asarray(labels, dtype=np.int64), files=files)


def _load_image_folder(path: Path) -> EvalData:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    files, labels = [], []
    for idx, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() in _IMAGE_EXTS:
                files.append(f)
                labels.append(idx)
    if not files:
        raise InvalidArgumentError(
            f"{path} has no labels.tsv and no class sub-folders with images; accepted: {_ACCEPTED}."
        )
    return EvalData(path.name, np.asarray(labels, dtype=np.int64), files=files)


def _transform(model: nn.Module, data_config: dict[str, Any] | None):
    import timm.data

    cfg = timm.data.resolve_data_config(dict(data_config or {}), model=model)
    return timm.data.create_transform(**cfg), cfg


def _resolve(data: str | os.PathLike | EvalData, limit: int | None) -> EvalData:
    ds = data if isinstance(data, EvalData) else load_eval_data(data)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive integer, got {limit!r}.")
        ds = ds.subset(limit)
    return ds


@torch.inference_mode()
def predict(
    model: nn.Module,
    data: str | os.PathLike | EvalData,
    batch_size: int = 64,
    *,
    data_config: dict[str, Any] | None = None,
    limit: int | None = None,
    progress: bool | str = False,
    k: int = 5,
) -> torch.Tensor:
    """The top-``k`` class indices (n, k) of ``model`` on ``data``, preprocessed with its timm data config.

    ``progress``: show a progress bar; a string names what is evaluated in the bar.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    ds = _resolve(data, limit)
    transform, cfg = _transform(model, data_config)
    model.eval()
    fast = ds.array is not None and tuple(ds.array.shape[1:3]) == tuple(cfg["input_size"][1:])
    fast = fast and cfg.get("crop_pct", 1.0) == 1.0
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    batches = range(0, len(ds), batch_size)
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "evaluating"
        batches = tqdm(batches, desc=label, unit="batch")
    out = []
    for start in batches:
        stop = min(start + batch_size, len(ds))
        if fast:  # already at the model's input size: resize and crop are identities
            x = torch.from_numpy(ds.array[start:stop]).permute(0, 3, 1, 2).float().div_(255)
            x = (x - mean) / std
        else:
            x = torch.stack([transform(ds.image(i)) for i in range(start, stop)])
        logits = logits_of(model(x))
        if not bool(torch.isfinite(logits).all()):
            raise UdfcError(f"the model gives NaN or infinite logits on images {start}..{stop - 1} of {ds.name}.")
        out.append(logits.topk(min(k, logits.shape[1]), dim=1).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def evaluate(
    model: nn.Module,
    data: str | os.PathLike | EvalData,
    batch_size: int = 64,
    reference: nn.Module | torch.Tensor | None = None,
    *,
    data_config: dict[str, Any] | None = None,
    limit: int | None = None,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (%) of ``model`` on ``data``; with ``reference``, top-1 agreement (%) too.

    ``reference`` is a model, or its top-1 predictions from ``predict`` (to compare many models with one).
    Returns ``{"top1", "top5", "n", "agreement", "dataset"}`` (``agreement`` is None without a reference).
    Deterministic: eval mode, fixed order, no augmentation. ``limit=N`` takes N evenly spaced images.

    Example (needs images, so not run as a doctest)::

        udfc_hub.evaluate(compressed, "imagenet_sample/", reference=base)
        # {'top1': ..., 'top5': ..., 'n': 1000, 'agreement': ..., 'dataset': 'imagenet_sample'}
    """
    ds = _resolve(data, limit)
    _check_labels(ds, model)
    pred = predict(model, ds, batch_size, data_config=data_config, progress=progress)
    ref = None
    if reference is not None:
        ref = (
            reference
            if isinstance(reference, torch.Tensor)
            else predict(reference, ds, batch_size, data_config=data_config)
        )
    return _scores(ds, pred, ref)


def _check_labels(ds: EvalData, model: nn.Module) -> None:
    num_classes = getattr(model, "num_classes", None)
    if len(ds) and num_classes and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= num_classes):
        raise InvalidArgumentError(
            f"labels of {ds.name} range over {int(ds.labels.min())}..{int(ds.labels.max())}, outside the model's "
            f"{num_classes} classes (0..{num_classes - 1})."
        )


def _scores(ds: EvalData, pred: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
    n = len(ds)
    labels = torch.from_numpy(ds.labels)
    agreement = None
    if ref is not None:
        ref = ref[:, 0] if ref.ndim == 2 else ref
        if ref.shape != (n,):
            raise InvalidArgumentError(f"reference predictions have shape {tuple(ref.shape)}, expected ({n},).")
        agreement = (ref == pred[:, 0]).sum()
    pct = (lambda v: round(100.0 * int(v) / n, 2)) if n else (lambda v: float("nan"))
    return {
        "top1": pct((pred[:, 0] == labels).sum()),
        "top5": pct((pred == labels[:, None]).any(dim=1).sum()),
        "n": n,
        "agreement": pct(agreement) if agreement is not None else None,
        "dataset": ds.name,
    }


def compare_accuracy(
    base: nn.Module,
    compressed: nn.Module,
    data: str | os.PathLike | EvalData,
    *,
    progress: bool = False,
    limit: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Evaluate ``base`` and ``compressed`` on the same images (the base model runs once).

    ``limit=N`` takes N evenly spaced images. Returns (before, after, card) where ``card`` is the ``accuracy``
    argument of ``save_pretrained``.
    """
    ds = _resolve(data, limit)
    _check_labels(ds, base)
    base_pred = predict(base, ds, progress="base model" if progress else False)
    before = _scores(ds, base_pred, None)
    after = evaluate(compressed, ds, reference=base_pred, progress="compressed model" if progress else False)
    card = {
        "dataset": before["dataset"],
        "n": after["n"],
        "top1": after["top1"],
        "top5": after["top5"],
        "base_top1": before["top1"],
        "base_top5": before["top5"],
        **({"of": ds.of} if ds.of else {}),  # a subset: the card says so and keeps it out of the model-index
    }
    return before, after, card


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a timm model's output (a tensor) or a transformers model's (``.logits``)."""
    return out.logits if hasattr(out, "logits") else out
