"""Every exception udfc_hub raises on purpose. Messages name the bad value, what is accepted, and what to do."""

from __future__ import annotations

__all__ = ["UdfcError", "InvalidArgumentError", "UnsupportedModelError", "ArtifactError"]


class UdfcError(Exception):
    """Base class of udfc_hub's own errors."""


class InvalidArgumentError(UdfcError, ValueError):
    """An argument has a value or type that is not accepted."""


class UnsupportedModelError(UdfcError, TypeError):
    """No adapter describes this model's channel couplings."""


class ArtifactError(UdfcError):
    """A saved artifact (config.json, model.safetensors) is missing, corrupt or inconsistent."""
