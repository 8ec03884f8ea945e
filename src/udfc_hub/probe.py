"""Expected inputs of every layer, from BatchNorm statistics alone: the BN-matched Gaussian probe.

One forward pass of standard-normal noise with every BatchNorm normalising by its batch statistics. Each BN
output then has exactly the per-channel mean ``beta`` and standard deviation ``|gamma|`` that the BN was trained
to produce, and whatever follows (activations, residual additions, pooling) carries these moments forward
through the real graph. No image is used: this is a Monte Carlo evaluation of the same Gaussian assumption as
DFQ's bias correction (Nagel et al., 2019), made generic over architectures. The model is left exactly as it
was (running statistics, ``num_batches_tracked``, train/eval flags).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame, pad_same

from .profile import input_device_dtype

__all__ = ["has_batchnorm", "probe_input_means", "probe_batch_size"]

_TARGET_POSITIONS = 1 << 16  # images x pixels of the probe input; 64 images at 32x32, 8 at 224x224


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def probe_batch_size(input_size: tuple[int, ...]) -> int:
    """About 65k input pixels, between 8 and 64 images."""
    pixels = math.prod(input_size[1:]) if len(input_size) > 1 else 1
    return max(8, min(64, round(_TARGET_POSITIONS / max(pixels, 1))))


@torch.no_grad()
def probe_input_means(
    model: nn.Module, names: list[str], input_size: tuple[int, ...], batch: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Mean input of each named conv / linear under the BN-matched Gaussian probe, in float64.

    A conv gets ``(C_in, kh, kw)``: the mean input under each kernel tap, averaged over output positions (zero
    padding included, so border effects are exact for a spatially constant mean). A linear gets ``(C_in,)``.
    """
    batch = batch or probe_batch_size(input_size)
    means: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(_conv_hook(name, means)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(_linear_hook(name, means)))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.training, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in norms
    ]
    was_training = model.training
    try:
        model.eval()
        for m in norms:
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: the running statistics stay bit-exact
        device, dtype = input_device_dtype(model)
        generator = torch.Generator().manual_seed(seed)
        model(torch.randn((batch, *input_size), generator=generator).to(device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, (training, momentum, tracked) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return means


def _linear_hook(name: str, out: dict):
    def hook(module, inputs):
        x = inputs[0].detach().to(torch.float64)
        out[name] = x.reshape(-1, x.shape[-1]).mean(0).cpu()

    return hook


def _conv_hook(name: str, out: dict):
    def hook(module, inputs):
        x = inputs[0].detach().to(torch.float64).mean(0, keepdim=True)  # (1, C, H, W)
        padding = module.padding
        if isinstance(module, Conv2dSame):  # timm's TF "same" padding (its quantized twin too), done in forward
            x, padding = pad_same(x, module.kernel_size, module.stride, module.dilation), (0, 0)
        elif padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation, strict=True))
        if module.padding_mode != "zeros" and any(padding):
            ph, pw = padding
            x, padding = F.pad(x, (pw, pw, ph, ph), mode=module.padding_mode), (0, 0)
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        kh, kw = module.kernel_size
        out[name] = cols[0].mean(-1).reshape(x.shape[1], kh, kw).cpu()

    return hook
