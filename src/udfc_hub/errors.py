"""Every exception udfc_hub raises on purpose. Messages name the bad value, what is accepted, and what to do."""

from __future__ import annotations

__all__ = ["UdfcError", "InvalidArgumentError", "UnsupportedModelError", "ArtifactError", "PublishError"]


class UdfcError(Exception):
    """Base class of udfc_hub's own errors."""


class InvalidArgumentError(UdfcError, ValueError):
    """An argument has a value or type that is not accepted."""


class UnsupportedModelError(UdfcError, TypeError):
    """No adapter describes this model's channel couplings."""


class ArtifactError(UdfcError):
    """A saved artifact (config.json, model.safetensors) is missing, corrupt or inconsistent."""


class PublishError(UdfcError):
    """Publishing to the Hub failed. ``local_path`` is the saved folder, which is kept for a retry."""

    def __init__(self, message: str, local_path=None):
        self.reason = message  # without the retry hint, for callers (the CLI) that give their own
        self.local_path = local_path
        if local_path is not None:
            message = (
                f"{message}. The compressed model is saved at {local_path}; "
                f"retry with udfc_hub.push('{local_path}', ...)."
            )
        super().__init__(message)
