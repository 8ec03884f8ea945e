"""Publish compressed models to the Hugging Face Hub: ``push`` a saved folder, or ``compress_and_push`` in one call.

The local folder is always written first and is never removed: when the upload fails, the error names it, and a
retry uploads the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import InvalidArgumentError, PublishError, UdfcError
from .artifact import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, check_artifact, save_pretrained

__all__ = ["push", "compress_and_push", "resolve_token", "load_model"]

# remote files an upload replaces: older weights in any format must not linger beside the new ones
STALE_PATTERNS = ["*.safetensors", "*.bin", "*.pth", "*.pt", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.index.json"]


def resolve_token(token: str | None) -> str:
    """The token to publish with: ``token``, else ``HF_TOKEN`` or the one saved by ``hf auth login``."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError(
            "No Hugging Face token: pass token=..., set the HF_TOKEN environment variable, or run `hf auth login`.",
            local_path=None,
        )
    return found


def push(
    path: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload a folder written by ``save_pretrained`` to the Hub repo ``repo_id`` in one commit.

    Creates the repo if needed, uploads ``config.json``, ``model.safetensors`` and ``README.md``, and deletes
    older weight files of the repo. Returns the commit URL (the pull request's URL with ``create_pr=True``).

    Example (needs a Hub and a token, so not run as a doctest)::

        udfc_hub.push("resnet34-udfc-p30-w6", "me/resnet34-udfc-p30-w6")
        # 'https://huggingface.co/me/resnet34-udfc-p30-w6/commit/...'
    """
    from huggingface_hub import HfApi

    from .. import __version__

    folder = Path(path)
    _check_repo_id(repo_id)
    config = check_artifact(folder)
    tok = resolve_token(token)
    settings = config["udfc"]["compression"]
    message = commit_message or (
        f"Upload {config.get('architecture') or config['model_type']} compressed with udfc-hub {__version__} "
        f"(prune_ratio={settings['prune_ratio']}, bits={settings['bits']}, method={settings['method']})"
    )
    api = HfApi(token=tok, library_name="udfc-hub", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            delete_patterns=STALE_PATTERNS,
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    except UdfcError:
        raise
    except Exception as e:  # the Hub client raises HTTP, connection and OS errors of several kinds
        raise PublishError(_describe(e, api.endpoint, repo_id), local_path=folder) from e
    return info.pr_url if create_pr and info.pr_url else info.commit_url


def _check_repo_id(repo_id: Any) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not isinstance(repo_id, str) or "/" not in repo_id:
            raise HFValidationError("it must look like 'namespace/name'")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvalidArgumentError(
            f"repo_id {repo_id!r} is not a valid Hub repo id ({e}); use 'namespace/name'."
        ) from None


def _describe(e: Exception, endpoint: str, repo_id: str) -> str:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return (
            f"the Hub at {endpoint} rejected the token (401 Unauthorized) for {repo_id}: check HF_TOKEN or log in again"
        )
    if status == 403:
        return f"the token may not write to {repo_id} on {endpoint} (403 Forbidden): use a token with write access"
    if status is not None and status >= 500:
        return f"the Hub at {endpoint} failed with {status} while publishing {repo_id}: retry later"
    if status is not None:
        return f"the Hub at {endpoint} answered {status} while publishing {repo_id}: {str(e).splitlines()[0]}"
    return f"could not reach the Hub at {endpoint} to publish {repo_id} ({type(e).__name__}: {str(e)[:200]})"


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
    except (OSError, ValueError):
        return None
    return where if isinstance(model_type, str) and model_type.startswith("udfc_") else None


def load_model(
    source: str | nn.Module, checkpoint: str | os.PathLike | None = None, pretrained: bool = True
) -> nn.Module:
    """A model from a timm name (``resnet34`` or ``resnet34.a1_in1k``), ``hf-hub:``/``local-dir:`` source, or module.

    Names load their pretrained weights through timm (from the Hub, or its cache); with ``checkpoint`` the weights
    come from that local file instead (timm's ``checkpoint_path``); ``pretrained=False`` gives random weights.
    """
    import timm

    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, str) or not source:
        raise InvalidArgumentError(
            f"model must be a timm model name, an hf-hub:/local-dir: source or an nn.Module, got {source!r}."
        )
    hub_source = source.startswith(("hf-hub:", "local-dir:"))
    if not hub_source and not timm.is_model(source.split(".")[0]):
        close = timm.list_models(f"*{source.split('.')[0]}*")[:8]
        hint = f" Did you mean one of: {', '.join(close)}?" if close else " See timm.list_models()."
        raise InvalidArgumentError(f"unknown timm model {source!r}.{hint}")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise InvalidArgumentError(f"checkpoint {checkpoint} does not exist.")
        try:
            return timm.create_model(source, pretrained=False, checkpoint_path=str(checkpoint)).eval()
        except Exception as e:
            raise InvalidArgumentError(
                f"could not load checkpoint {checkpoint} into {source}: {type(e).__name__}: {str(e)[:300]}"
            ) from e
    if not pretrained and not hub_source:
        return timm.create_model(source, pretrained=False).eval()
    try:
        twin = _transformers_twin(source) if hub_source else None
        if twin is not None:  # a transformers-native udfc artifact (model_type udfc_resnet, ...)
            from transformers import AutoModelForImageClassification

            return AutoModelForImageClassification.from_pretrained(twin).eval()
        return timm.create_model(source, pretrained=True).eval()
    except UdfcError:
        raise
    except Exception as e:  # network, missing weights, or a corrupt cache: say so in one line
        raise UdfcError(
            f"could not load pretrained weights for {source} ({type(e).__name__}: {str(e)[:300]}). Without network, "
            "give a local file (--checkpoint / checkpoint=) or a local-dir: folder."
        ) from e


def compress_and_push(
    model: str | nn.Module,
    repo_id: str,
    prune_ratio: float = 0.3,
    bits: int | None = 6,
    method: str = "udfc",
    criterion: str = "l2",
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    eval_data: str | os.PathLike | None = None,
    local_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **compress_kwargs: Any,
) -> str:
    """Compress ``model`` without data, save it, and publish it to ``repo_id``; returns the commit URL.

    ``model`` is a timm name (optionally with a pretrained tag, e.g. ``resnet34.a1_in1k``), an ``hf-hub:`` or
    ``local-dir:`` source, or an ``nn.Module``. The folder goes to ``local_dir`` (or a new temporary folder, named
    in the log and in any error) and stays there. With ``eval_data`` (see ``udfc_hub.evaluate``) the accuracy
    before and after is measured and written into the card. Other keyword arguments go to ``udfc_hub.compress``.

    Example (needs a Hub and a token, so not run as a doctest)::

        udfc_hub.compress_and_push("resnet34", "me/resnet34-udfc-p30-w6", prune_ratio=0.3, bits=6)
    """
    from ..engine import compress
    from ..evaluation import compare_accuracy

    _check_repo_id(repo_id)
    tok = resolve_token(token)  # before any compression work
    if local_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="udfc-hub-")) / repo_id.split("/")[-1]
    else:
        folder = Path(local_dir)
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise InvalidArgumentError(f"{folder} exists and is not empty; pass overwrite=True or another local_dir.")
    base = load_model(model)
    result = compress(base, prune_ratio=prune_ratio, bits=bits, method=method, criterion=criterion, **compress_kwargs)
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
