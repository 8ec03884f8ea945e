"""The model card (README.md) of a compressed model, rendered from ``model_cards/udfc_model_card.md``.

Metadata follows the Hub's conventions: ``library_name: timm``, ``pipeline_tag``, ``license`` and ``base_model``
inherited from the base, ``base_model_relation: quantized`` when the weights are quantized, and ``model-index``
results only for accuracies that were measured and passed in.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..profile import ModelStats
from ..units import format_bytes, format_count
from .format import FIRST_READER
from .manifest import Manifest

__all__ = ["render_card", "card_template"]

TEMPLATE = "udfc_model_card.md"


def card_template() -> str:
    return resources.files("udfc_hub").joinpath("model_cards", TEMPLATE).read_text()


def _mb(n_bytes: float) -> str:
    return format_bytes(n_bytes, 1)


def _count(n: float) -> str:
    return format_count(n)


def markdown_text(text: Any) -> str:
    """``text`` as literal Markdown: HTML escaped, Markdown's special characters backslash-escaped, one line.

    >>> markdown_text("<b>bold</b>")
    '&lt;b&gt;bold&lt;/b&gt;'
    """
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*{}\[\]()#+!|~])", r"\\\1", escaped)  # "_" inside words is literal


def python_literal(text: str) -> str:
    """A double-quoted Python string literal of ``text``, for a copy-paste code snippet.

    >>> print(python_literal("hf-hub:me/r18"))
    "hf-hub:me/r18"
    """
    return json.dumps(text)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "custom"


_METHOD_TEXT = {
    "udfc+": "The lost channels and the quantization error are repaired in closed form by udfc-hub's `udfc+` method "
    "(UDFC, Bai et al., ICCV 2023, with a ReLU-aware fit and bias and variance corrections from BatchNorm "
    "moments where the layers allow them), using only the base model's weights (and its BatchNorm statistics, "
    "where it has any).",
    "udfc": "The lost channels and the quantization error are repaired in closed form with UDFC (Bai et al., "
    "ICCV 2023), using only the base model's weights (and its BatchNorm statistics, where it has any).",
    "nm": "Each removed channel is merged into its most similar kept channel (Neuron Merging, Kim et al., "
    "NeurIPS 2020), using only the base model's weights (and its BatchNorm statistics, where it has any).",
    "prune": "No compensation was applied (a baseline).",
    "rtn": "No compensation was applied (a baseline).",
}

_REFIT_TEXT = (
    " Every layer was then refitted by least squares, in forward order, to reproduce the base model's layer outputs "
    "on images distilled from its BatchNorm statistics (noise optimised to match them; no real images were used)."
)


def _quantization_done(manifest: Manifest, settings: dict) -> list[str]:
    bits, act = settings["bits"], manifest.act_bits
    done = []
    if bits is not None:
        grid = ", integer grid" if manifest.grid == "int" else ""
        if manifest.layer_bits:
            spread = "/".join(str(b) for b in sorted({manifest.bits_of(n) for n in manifest.quantized_layers}))
            scales = f"{settings['granularity']} scales{grid}"
            done.append(f"mixed {spread}-bit weights, the size of {bits} bits everywhere ({scales})")
        else:
            done.append(f"{bits}-bit weights ({settings['granularity']} scales{grid})")
    if act is not None:
        done.append(f"{act}-bit activations (W{bits}A{act}: the input of every quantized layer, ranges without data)")
    return done


def _accuracy(acc: dict[str, Any]) -> tuple[list[EvalResult] | None, str | None]:
    """The model-index entries and the card's sentence for measured accuracy. A subset (``n`` of the ``of``
    images of a data set) is said to be one, and kept out of the model-index (Hub widgets show it as a result)."""
    if "top1" not in acc:
        return None, None
    where = markdown_text(acc.get("dataset", "the evaluation images"))
    if "of" in acc and acc["of"] > acc.get("n", acc["of"]):
        return None, (
            f"Accuracy measured by udfc-hub on a subset: {acc['n']} of the {acc['of']} images of {where} (evenly "
            "spaced), so it is not reported in the model-index."
        )
    dataset = acc.get("dataset", "evaluation images")
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=_slug(dataset),
            dataset_name=dataset,
            metric_type="accuracy",
            metric_name=metric,
            metric_value=acc[key],
        )
        for key, metric in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"))
        if key in acc
    ]
    n = f" ({acc['n']} images)" if "n" in acc else ""
    return results, f"Accuracy measured by udfc-hub on {where}{n}."


def render_card(
    manifest: Manifest,
    *,
    library: str,
    architecture: str,
    license: str | None,
    after: ModelStats,
    file_size: int,
    name: str,
    repo_id: str | None,
    input_size: tuple[int, ...] = (3, 224, 224),
) -> str:
    """The card text of an artifact with this ``manifest``, saved as ``architecture`` for ``library``.

    ``name`` titles the card; ``repo_id`` (when known) goes into the usage snippet, else a placeholder does.
    """
    prov = manifest.provenance
    settings = prov.settings
    bits, ratio = settings["bits"], settings["prune_ratio"]
    base_arch = manifest.base_architecture
    base_model = prov.base_model
    acc = prov.accuracy or {}
    repo = repo_id or f"<namespace>/{name}"

    done = []
    if ratio > 0:
        done.append(f"{ratio:.0%} of the prunable channels removed ({settings['criterion']} criterion)")
    act = manifest.act_bits
    done += _quantization_done(manifest, settings)
    tags = ["udfc", "data-free", "image-classification", library]
    if ratio > 0:
        tags.append("pruned")
    if bits is not None:
        tags += ["quantized", f"{bits}-bit"]
    if act is not None:
        tags.append(f"w{bits}a{act}")

    eval_results, accuracy_note = _accuracy(acc)
    extra = {"base_model_relation": "quantized"} if bits is not None and base_model else {}
    data = ModelCardData(
        library_name=library,
        pipeline_tag="image-classification",
        license=license,
        base_model=base_model,
        tags=tags,
        eval_results=eval_results,
        model_name=name if eval_results else None,
        **extra,
    )

    comparison = [
        ("parameters", _count(prov.base_params), _count(after.params)),
        ("MACs (one image)", _count(prov.base_macs), _count(after.macs)),
        ("weights file", f"{_mb(prov.base_params * 4)} (float32)", f"{_mb(file_size)} (model.safetensors)"),
    ]
    for key, label in (("top1", "top-1 %"), ("top5", "top-5 %")):
        if key in acc:
            comparison.append((label, f"{acc['base_' + key]:.2f}" if f"base_{key}" in acc else "-", f"{acc[key]:.2f}"))
    license_note = None
    if not license:
        license_note = (
            "No license was given for these weights: ask the publisher before reuse (publishers: "
            '`save_pretrained(..., license="apache-2.0")`, CLI `--license`, or the base model\'s, inherited).'
        )
    storage = f"{bits}-bit codes packed densely with their scales" if bits is not None else "float32 tensors"
    if act is not None:
        storage += ", next to the input scale and zero point of each quantized layer"
    kind = "transformers" if library == "transformers" else "timm"
    base_description = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"{kind} `{base_arch}`"

    card = ModelCard.from_template(
        data,
        template_str=card_template(),
        method_description=_METHOD_TEXT.get(settings.get("method"), _METHOD_TEXT["udfc"])
        + (_REFIT_TEXT if settings.get("refit") == "distilled" else ""),
        model_name=markdown_text(name),
        base_description=base_description,
        what_was_done=", ".join(done[:-1]) + " and " + done[-1] if len(done) > 1 else "".join(done),
        comparison=comparison,
        accuracy_note=accuracy_note,
        load_literal=python_literal(f"hf-hub:{repo}"),
        repo_literal=python_literal(repo),
        architecture=architecture,
        library=library,
        storage=storage,
        act_bits=act,
        settings=list(prov.config.to_dict().items()),  # field order, whatever order the file kept
        input_size=tuple(input_size),
        min_version=FIRST_READER[manifest.format_version],
        license_note=license_note,
    )
    return str(card).rstrip() + "\n"
