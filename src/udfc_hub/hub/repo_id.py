"""Hub repo ids, checked with huggingface_hub's own validator before any work is done."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["check_repo_id"]


def check_repo_id(repo_id: Any, what: str = "repo_id", namespace: bool = True) -> None:
    """Refuse an id that the Hub would refuse (``namespace``: it must be ``namespace/name``).

    >>> check_repo_id("me/resnet34-udfc-p30-w6")
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    shape = "'namespace/name'" if namespace else "a Hub model id such as 'timm/resnet50.a1_in1k'"
    try:
        if not isinstance(repo_id, str) or (namespace and "/" not in repo_id):
            raise HFValidationError(f"it must look like {shape}")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvalidArgumentError(f"{what} {repo_id!r} is not a valid Hub repo id ({e}); use {shape}.") from None
