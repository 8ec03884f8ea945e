"""Parameter and multiply-accumulate counts of a model, from one forward pass at batch size 1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ModelStats", "profile_model", "default_input_size", "input_device_dtype"]


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int  # multiply-accumulates of conv and linear layers for one input


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's timm ``pretrained_cfg['input_size']``, a transformers config's ``image_size``, else 3x224x224."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        channels, height, width = cfg["input_size"]
        first = _first_conv(model, cfg.get("first_conv"))
        if isinstance(first, nn.Conv2d):  # in_chans=1 and the like: the config still says 3
            channels = first.in_channels * first.groups
        fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if fixed is not None and getattr(model.patch_embed, "strict_img_size", True):  # ViT built for img_size
            height, width = fixed
        return (channels, height, width)
    hf = getattr(model, "config", None)
    size = getattr(hf, "image_size", None)
    if isinstance(size, int):
        return (int(getattr(hf, "num_channels", 3)), size, size)
    return (3, 224, 224)


def _first_conv(model: nn.Module, named: object) -> nn.Module | None:
    """The stem conv: the one timm's ``pretrained_cfg['first_conv']`` names, else the first weight layer."""
    if isinstance(named, str) and named:
        try:
            return model.get_submodule(named)
        except AttributeError:
            pass
    if named == []:  # timm's way of saying the stem is not a conv (a DCT, a patch projection of its own)
        return None
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


def input_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where and in which float type to make an input for ``model``: its first parameter's (CPU float32 if none)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return device, dtype


@torch.no_grad()
def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict at its dtypes (the float model's weights file, less its header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def profile_model(model: nn.Module, input_size: tuple[int, ...] | None = None) -> ModelStats:
    """Count parameters and conv/linear MACs of ``model`` for one input of ``input_size`` (C, H, W).

    >>> profile_model(nn.Linear(3, 2), input_size=(3,)).macs
    6
    """
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            macs += output.numel() * per_output
        else:
            macs += output.numel() * module.weight.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        device, dtype = input_device_dtype(model)
        model(torch.zeros((1, *size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelStats(params=sum(p.numel() for p in model.parameters()), macs=int(macs))
