"""Publish a saved folder to the Hugging Face Hub (``push``); ``udfc_hub.api.compress_and_push`` builds on it.

The local folder is always written first and is never removed: when the upload fails, the error names it, and a
retry uploads the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidArgumentError, PublishError, UdfcError
from .artifact import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, check_artifact
from .repo_id import check_repo_id

__all__ = ["push", "resolve_token", "check_repo_id"]

# remote files an upload replaces: older weights in any format must not linger beside the new ones
STALE_PATTERNS = ["*.safetensors", "*.bin", "*.pth", "*.pt", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.index.json"]


def resolve_token(token: str | None) -> str:
    """The token to publish with: ``token``, else ``HF_TOKEN`` or the one saved by ``hf auth login``."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError(
            "No Hugging Face token: set the HF_TOKEN environment variable or run `hf auth login` "
            "(in Python you may also pass token=...).",
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

    from .._version import __version__

    folder = Path(path)
    check_repo_id(repo_id)
    config = check_artifact(folder)
    if not (folder / CARD_NAME).is_file():  # a repo without its card has no license, base model or usage
        raise InvalidArgumentError(
            f"{folder} has no {CARD_NAME} (the model card, which carries the license, the base model and how to "
            f"load it); nothing was pushed. Restore it, or write the folder again: udfc_hub.save_pretrained("
            f"udfc_hub.load_model('local-dir:{folder}'), NEW_FOLDER)."
        )
    tok = resolve_token(token)
    settings = config["udfc"]["compression"]
    message = commit_message or (
        f"Upload {config.get('architecture') or config['model_type']} compressed with udfc-hub {__version__} "
        f"(prune_ratio={settings['prune_ratio']}, bits={settings['bits']}, method={settings['method']})"
    )
    api = HfApi(token=tok, library_name="udfc-hub", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with _staged(folder, repo_id) as staged:  # the card's snippet names this repo
            info = _upload(api, staged, repo_id, message, revision, create_pr)
    except UdfcError:
        raise
    except Exception as e:  # the Hub client raises HTTP, connection and OS errors of several kinds
        raise PublishError(_describe(e, api.endpoint, repo_id), local_path=folder) from e
    return info.pr_url if create_pr and info.pr_url else info.commit_url


def _upload(api, folder: Path, repo_id: str, message: str, revision: str | None, create_pr: bool):
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        delete_patterns=STALE_PATTERNS,
        commit_message=message,
        revision=revision,
        create_pr=create_pr,
        repo_type="model",
    )


@contextmanager
def _staged(folder: Path, repo_id: str) -> Iterator[Path]:
    """The files to upload, with the card's usage snippet naming ``repo_id`` (a card saved before the repo was
    known names a placeholder, or another repo): a scratch folder of hard links (copies where links cannot be
    made) beside a new README.md. The user's folder is left as it is."""
    beside = folder.resolve().parent  # the same file system, where hard links work
    with tempfile.TemporaryDirectory(
        prefix=".udfc-push-", dir=beside if os.access(beside, os.W_OK) else None
    ) as scratch:
        staged = Path(scratch)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            try:
                os.link(folder / name, staged / name)
            except OSError:
                shutil.copy2(folder / name, staged / name)
        (staged / CARD_NAME).write_text(card_for_repo((folder / CARD_NAME).read_text(), repo_id))
        yield staged


def card_for_repo(card: str, repo_id: str) -> str:
    """``card`` with its usage snippet's repo (``from_pretrained("...")``, ``"hf-hub:..."``) replaced by ``repo_id``."""
    found = re.search(r'from_pretrained\(("(?:[^"\\]|\\.)*")\)', card)
    if found is None:
        return card
    old = json.loads(found.group(1))
    return card.replace(json.dumps(f"hf-hub:{old}"), json.dumps(f"hf-hub:{repo_id}")).replace(
        json.dumps(old), json.dumps(repo_id)
    )


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
