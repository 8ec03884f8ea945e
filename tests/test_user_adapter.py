"""docs/models.md's example: a user states the couplings of their own model by module names."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import udfc_hub


class PreActBlock(nn.Module):
    """ReLU at the block's input (not after the add); a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        x = F.relu(x)
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)


class PreActCifarResNet(nn.Module):
    def __init__(self, n=2, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(PreActBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(self.bn1(self.conv1(x)))
        return self.linear(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


class PreActAdapter:
    """Couplings by module name: each block's conv1 -> bn1 -> ReLU -> conv2 is prunable; the rest is not."""

    family = "pre-activation CIFAR ResNet (1x1 conv shortcuts)"
    examples = "PreActCifarResNet()"

    def matches(self, model):
        return isinstance(model, PreActCifarResNet)

    def describe(self, model):
        Layer, ChannelGroup, Consumer = udfc_hub.Layer, udfc_hub.ChannelGroup, udfc_hub.Consumer
        layers, groups = [Layer("conv1", "bn1")], []
        for i, block in enumerate(model.blocks):
            inner = Layer(f"blocks.{i}.conv1", f"blocks.{i}.bn1")
            layers += [inner, Layer(f"blocks.{i}.conv2", f"blocks.{i}.bn2")]
            if len(block.shortcut):
                layers.append(Layer(f"blocks.{i}.shortcut.0", f"blocks.{i}.shortcut.1"))
            groups.append(ChannelGroup(inner, consumers=(Consumer(f"blocks.{i}.conv2"),), relu_after_norm=True))
        layers.append(Layer("linear"))
        return udfc_hub.ModelSpec(self.family, tuple(layers), tuple(groups))


def test_user_described_model_compresses():
    with udfc_hub.registered_adapter(PreActAdapter()):
        model = PreActCifarResNet().eval()
        result = udfc_hub.compress(model, prune_ratio=0.5, bits=6, input_size=(3, 32, 32), layer_ratios="uniform")
        assert [m.conv1.out_channels for m in result.model.blocks] == [8, 8, 16, 16, 32, 32]
        assert result.model.blocks[2].shortcut[0].weight.shape == (32, 16, 1, 1)  # residual stream untouched
        assert set(result.quantized) == {layer.name for layer in result.spec.layers}
        x = torch.randn(2, 3, 32, 32)
        with torch.inference_mode():
            assert result.model(x).shape == (2, 10)
        assert result.report.after.params < 0.7 * result.report.before.params
