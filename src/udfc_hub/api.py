"""The public, task-level functions above the Hub layer: load a model from any source, compress and publish it.

``load_model`` turns a timm name, an ``hf-hub:`` / ``local-dir:`` source or a module into a model;
``compress_and_push`` loads, compresses (``udfc_hub.compress``, the same options and defaults by construction:
both build a ``CompressionConfig``), optionally evaluates, saves and pushes.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch.nn as nn

from .config import CompressionConfig
from .errors import InvalidArgumentError, UdfcError
from .hub.artifact import check_output_folder, save_pretrained
from .hub.publish import check_repo_id, push, resolve_token
from .hub.validate import validate_folder

__all__ = ["load_model", "compress_and_push"]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")


def _transformers_twin(source: str) -> str | None:
    """The folder or repo id of a ``local-dir:`` / ``hf-hub:`` source whose config.json has a udfc_ model_type."""
    kind, _, where = source.partition(":")
    if kind == "local-dir":
        path = Path(where) / "config.json"
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(where, "config.json"))
    try:
        model_type = json.loads(path.read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        return None
    return where if isinstance(model_type, str) and model_type.startswith("udfc_") else None


def _check_source(source: Any) -> None:
    import timm

    if not isinstance(source, str) or not source:
        raise InvalidArgumentError(
            f"model must be a timm model name, an hf-hub:/local-dir: source or an nn.Module, got {source!r}."
        )
    if source.startswith(_HUB_PREFIXES) or timm.is_model(source.split(".")[0]):
        return
    if Path(source).exists():  # a path given without local-dir:
        what = "a folder without config.json" if Path(source).is_dir() else "a file"
        raise InvalidArgumentError(
            f"{source} is {what}: not a udfc_hub model folder. Give a folder written by save_pretrained / udfc-hub "
            "compress (local-dir:PATH), a timm model name, or hf-hub:user/repo."
        )
    name = source.split(".")[0]
    close = timm.list_models(f"*{name}*")[:8] or difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.75)
    hint = f" Did you mean one of: {', '.join(close)}?" if close else " See timm.list_models()."
    raise InvalidArgumentError(f"unknown timm model {source!r}.{hint}")


def _from_checkpoint(source: str, checkpoint: str | os.PathLike) -> nn.Module:
    import timm

    if not Path(checkpoint).is_file():
        raise InvalidArgumentError(f"checkpoint {checkpoint} does not exist.")
    try:
        return timm.create_model(source, pretrained=False, checkpoint_path=str(checkpoint)).eval()
    except Exception as e:
        raise InvalidArgumentError(f"could not load checkpoint {checkpoint} into {source}: {_why(e)}") from e


def _why(e: Exception) -> str:
    """One line for a failed load: a state dict that does not fit is counted (torch lists every key)."""
    text = str(e)
    if "Error(s) in loading state_dict" in text:
        parts = []
        for kind in ("Missing", "Unexpected"):  # torch quotes every key on the line after this label
            _, found, rest = text.partition(f"{kind} key(s) in state_dict:")
            if found:
                keys = re.findall(r'"[^"]+"', rest.split("\n")[0])
                parts.append(f"{len(keys)} {kind.lower()} tensor(s)")
        if "size mismatch" in text:
            parts.append(f"{text.count('size mismatch')} of another shape")
        return (
            f"its tensors do not fit this architecture ({', '.join(parts)}): is it a checkpoint of another model? "
            "Give the model name it was trained as."
        )
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}"


def _pretrained(source: str) -> nn.Module:
    import timm

    if source.startswith("local-dir:"):  # a folder: the one validation first, whatever loads it next
        validate_folder(source.removeprefix("local-dir:"))
    with _offline_if_unreachable(source) as offline:
        try:
            twin = _transformers_twin(source) if source.startswith(_HUB_PREFIXES) else None
            if twin is not None:  # a transformers-native udfc artifact (model_type udfc_resnet, ...)
                from transformers import AutoModelForImageClassification

                return AutoModelForImageClassification.from_pretrained(twin).eval()
            model = timm.create_model(source, pretrained=True).eval()
        except UdfcError:
            raise
        except Exception as e:  # network, missing weights, or a corrupt cache: say so in one line
            raise UdfcError(_load_failure(source, e, offline)) from e
    # these weights came from a named pretrained source: the card may name it as the base model
    hub_id = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else None
    if not source.startswith("local-dir:"):
        model.udfc_base_model = hub_id or (model.pretrained_cfg or {}).get("hf_hub_id")
    return model


@contextmanager
def _offline_if_unreachable(source: str) -> Iterator[str | None]:
    """Why the load runs offline: "set" (HF_HUB_OFFLINE), "unresolved" (the Hub's host name does not resolve: the
    load runs as if HF_HUB_OFFLINE were set, so that cached weights still load and missing ones fail at once
    instead of after a minute of retries), or None (online, or a local folder)."""
    from huggingface_hub import constants

    if source.startswith("local-dir:"):
        yield None
    elif constants.HF_HUB_OFFLINE:
        yield "set"
    elif _resolves(urlparse(constants.ENDPOINT).hostname):
        yield None
    else:
        constants.HF_HUB_OFFLINE = True
        try:
            yield "unresolved"
        finally:
            constants.HF_HUB_OFFLINE = False


def _resolves(host: str | None, timeout: float = 5.0) -> bool:
    """Whether ``host`` resolves; a resolver that has not answered within ``timeout`` seconds counts as yes."""
    if not host:
        return True
    answer: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else True


def _load_failure(source: str, e: Exception, offline: str | None = None) -> str:
    """One message for a failed pretrained load, with the ways to work without the network."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    local = "load a local weights file (CLI --checkpoint PATH, Python checkpoint=PATH), a saved folder "
    local += "(local-dir:PATH), or random weights (CLI --random-init, Python pretrained=False)"
    cache = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if offline == "set":
        why = f"HF_HUB_OFFLINE=1 is set and the weights are not in {cache}"
        then = f"download them once with the network on (unset HF_HUB_OFFLINE), or {local}"
    elif offline == "unresolved":
        host = urlparse(constants.ENDPOINT).hostname
        why = f"{host} does not resolve (no network?) and the weights are not in {cache}"
        then = f"{local}; set HF_HUB_OFFLINE=1 to skip the network look-up altogether"
    elif isinstance(e, LocalEntryNotFoundError) or "offline" in str(e).lower():
        why = f"the Hub cannot be reached and the weights are not in {cache}"
        then = f"{local}, or set HF_HUB_OFFLINE=1 to use the cache without waiting for the network"
    else:
        why = f"{type(e).__name__}: {str(e)[:300]}"
        then = f"to work offline, {local}, or set HF_HUB_OFFLINE=1 to use the cache without waiting for the network"
    then = then[0].upper() + then[1:]
    return f"could not load pretrained weights for {source} ({why}). {then} (docs/guide.md: Working offline)."


def load_model(
    source: str | nn.Module, checkpoint: str | os.PathLike | None = None, pretrained: bool = True
) -> nn.Module:
    """A model from a timm name (``resnet34`` or ``resnet34.a1_in1k``), ``hf-hub:``/``local-dir:`` source, or module.

    Names load their pretrained weights through timm (from the Hub, or its cache); with ``checkpoint`` the weights
    come from that local file instead (timm's ``checkpoint_path``); ``pretrained=False`` gives random weights.

    Example:
        >>> import udfc_hub
        >>> udfc_hub.load_model("resnet18", pretrained=False).num_classes
        1000
    """
    import timm

    if isinstance(source, nn.Module):
        return source
    _check_source(source)
    if checkpoint is not None:
        return _from_checkpoint(source, checkpoint)
    if not pretrained and not source.startswith(_HUB_PREFIXES):
        return timm.create_model(source, pretrained=False).eval()
    return _pretrained(source)


def compress_and_push(
    model: str | nn.Module,
    repo_id: str,
    config: CompressionConfig | None = None,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    eval_data: str | os.PathLike | None = None,
    local_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **options: Any,
) -> str:
    """Compress ``model`` without data, save it, and publish it to ``repo_id``; returns the commit URL.

    ``model`` is a timm name (optionally with a pretrained tag, e.g. ``resnet34.a1_in1k``), an ``hf-hub:`` or
    ``local-dir:`` source, or an ``nn.Module``. ``config`` and ``**options`` are those of ``udfc_hub.compress``
    (``prune_ratio``, ``bits``, ``method``, ...), with the same defaults. The folder goes to ``local_dir`` (or a
    new temporary folder, named in the log and in any error) and stays there. With ``eval_data`` (see
    ``udfc_hub.evaluate``) the accuracy before and after is measured and written into the card. The repo id,
    the options, the output folder and the token are all checked before any work.

    Example (needs a Hub and a token, so not run as a doctest)::

        udfc_hub.compress_and_push("resnet34", "me/resnet34-udfc-p30-w6", prune_ratio=0.3, bits=6)
    """
    from .engine import compress
    from .evaluation import compare_accuracy

    check_repo_id(repo_id)
    cfg = CompressionConfig.build(config, **options)
    if local_dir is not None:
        folder = check_output_folder(local_dir, overwrite)
    tok = resolve_token(token)  # before any compression work
    if local_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="udfc-hub-")) / repo_id.split("/")[-1]
    base = load_model(model)
    result = compress(base, cfg)
    accuracy = None
    if eval_data is not None:
        _, _, accuracy = compare_accuracy(base, result.model, eval_data)
    save_pretrained(result, folder, overwrite=overwrite, accuracy=accuracy, repo_id=repo_id)
    return push(
        folder,
        repo_id,
        private=private,
        token=tok,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )
