"""Model architectures that udfc_hub registers with timm (importing this module registers them)."""

from .cifar_resnet import CifarBasicBlock, CifarResNet, ShortcutA

__all__ = ["CifarBasicBlock", "CifarResNet", "ShortcutA"]
