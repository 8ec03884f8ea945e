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
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame, pad_same
from torch.overrides import TorchFunctionMode

from .ops.activations import ActRange, choose_range, fake_quantize
from .profile import input_device_dtype

__all__ = [
    "has_batchnorm",
    "bn_matched",
    "probe_input",
    "natural_noise",
    "probe_input_means",
    "probe_correlations",
    "probe_statistics",
    "probe_stream_shares",
    "probe_activation_ranges",
    "probe_batch_size",
    "probe_tensor_flow",
    "TensorFlow",
    "tap_means",
    "tap_covariance",
]

_TARGET_POSITIONS = 1 << 16  # images x pixels of the probe input; 64 images at 32x32, 8 at 224x224
# natural_noise: amplitude spectrum 1 / f (Field 1987), colour planes sharing 90 % of their variance
NATURAL_EXPONENT, NATURAL_SHARED = 1.0, 0.9


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def probe_batch_size(input_size: tuple[int, ...]) -> int:
    """About 65k input pixels, between 8 and 64 images."""
    pixels = math.prod(input_size[1:]) if len(input_size) > 1 else 1
    return max(8, min(64, round(_TARGET_POSITIONS / max(pixels, 1))))


@contextmanager
def bn_matched(model: nn.Module):
    """Every BatchNorm normalises by its batch statistics inside the block; the model is left exactly as it was
    (running statistics bit for bit, ``num_batches_tracked``, train/eval flags)."""
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
        yield
    finally:
        for m, (training, momentum, tracked) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)


def probe_input(
    model: nn.Module, input_size: tuple[int, ...], batch: int | None = None, seed: int = 0, natural: bool = False
):
    """The probe's standard-normal input batch, on the model's device and dtype; ``natural``: shaped like natural
    images' second-order statistics (``natural_noise``)."""
    batch = batch or probe_batch_size(input_size)
    device, dtype = input_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_size), generator=generator)
    return (natural_noise(x) if natural else x).to(device=device, dtype=dtype)


def natural_noise(x: torch.Tensor, exponent: float = NATURAL_EXPONENT, shared: float = NATURAL_SHARED) -> torch.Tensor:
    """White noise ``(N, C, H, W)`` given the two textbook second-order statistics of natural images, still with
    zero mean and unit variance per image and channel: an amplitude spectrum falling as ``1 / f^exponent``
    (Field 1987: exponent about 1), and channels that share a fraction ``shared`` of their variance (the colour
    planes of a photograph are mostly its luminance). No image is used. A 1-D input (no spatial axes) is returned
    as it is."""
    if x.ndim != 4:
        return x
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]
    fx = torch.fft.fftfreq(x.shape[-1])[None, :]
    f = (fy**2 + fx**2).sqrt()
    f[0, 0] = f[f > 0].min() if bool((f > 0).any()) else 1.0
    y = torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) / f**exponent).real
    y = (y - y.mean((2, 3), keepdim=True)) / y.std((2, 3), keepdim=True).clamp(min=1e-12)
    y = shared**0.5 * y[:, :1] + (1 - shared) ** 0.5 * y
    return (y / y.std((2, 3), keepdim=True).clamp(min=1e-12)).to(x.dtype)


@torch.no_grad()
def probe_input_means(
    model: nn.Module, names: list[str], input_size: tuple[int, ...], batch: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Mean input of each named conv / linear under the BN-matched Gaussian probe, in float64.

    A conv gets ``(C_in, kh, kw)``: the mean input under each kernel tap, averaged over output positions (zero
    padding included, so border effects are exact for a spatially constant mean). A linear gets ``(C_in,)``.
    """
    return probe_statistics(model, names, [], input_size, batch, seed)[0]


@torch.no_grad()
def probe_correlations(
    model: nn.Module, names: list[str], input_size: tuple[int, ...], batch: int | None = None, seed: int = 0
) -> dict[str, tuple[torch.Tensor, int]]:
    """Correlation matrix of the output channels of each named module (a BatchNorm) under the BN-matched Gaussian
    probe, over every image and position, with the number of samples it was measured on: ``name -> (corr,
    samples)``, float64 on the CPU. A channel that does not vary is uncorrelated with the rest (unit diagonal).
    A norm with its activation inside (timm's ``BatchNormAct2d``) is measured before the activation, where the
    moment model's BN output is."""
    return probe_statistics(model, [], names, input_size, batch, seed)[1]


@torch.no_grad()
def probe_statistics(
    model: nn.Module,
    mean_names: list[str],
    correlation_names: list[str],
    input_size: tuple[int, ...],
    batch: int | None = None,
    seed: int = 0,
    covariance_names: tuple[str, ...] | list[str] = (),
    natural: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, int]], dict[str, tuple[torch.Tensor, int]]]:
    """``probe_input_means`` of ``mean_names``, ``probe_correlations`` of ``correlation_names`` and the
    ``tap_covariance`` of the input of each conv / linear in ``covariance_names``, from one forward pass of the
    probe (its input shaped by ``natural_noise`` when ``natural``)."""
    means: dict[str, torch.Tensor] = {}
    found: dict[str, tuple[torch.Tensor, int]] = {}
    covariances: dict[str, tuple[torch.Tensor, int]] = {}

    def covariance_of(name):
        def record(module, inputs):
            covariances[name] = tap_covariance(module, inputs[0])

        return record

    def mean_of(name):
        def record(module, inputs):
            means[name] = tap_means(module, inputs[0])

        return record

    def correlation_of(name):
        def record(module, inputs, output=None):
            found[name] = _channel_correlation(inputs[0] if output is None else output)

        return record

    handles = [
        model.get_submodule(n).register_forward_pre_hook(mean_of(n))
        for n in mean_names
        if isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))
    ]
    handles += [
        model.get_submodule(n).register_forward_pre_hook(covariance_of(n))
        for n in covariance_names
        if isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))
    ]
    for n in correlation_names:
        norm = model.get_submodule(n)
        act = getattr(norm, "act", None)
        if isinstance(act, nn.Module):  # the activation's input, before an in-place activation runs
            handles.append(act.register_forward_pre_hook(correlation_of(n)))
        else:
            handles.append(norm.register_forward_hook(correlation_of(n)))
    try:
        with bn_matched(model):
            model(probe_input(model, input_size, batch, seed, natural))
    finally:
        for h in handles:
            h.remove()
    return means, found, covariances


@torch.no_grad()
def probe_stream_shares(
    model: nn.Module,
    residuals: list[tuple[str, str, str | None]],
    input_size: tuple[int, ...],
    batch: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """What each residual block's branch brings to the sum it joins, as a share of the sum's variance:
    ``sum_c Var(branch_c) / (sum_c Var(branch_c) + sum_c Var(shortcut_c))``, from one forward pass of the probe
    (white noise, every BN on its batch statistics). ``residuals``: (norm, block, shortcut) of each block's last BN,
    whose output is added to ``shortcut(block input)`` (the block input itself when shortcut is None). Returns the
    share by block name; a block whose branch and shortcut disagree in shape is left out."""
    branch: dict[str, tuple[float, tuple]] = {}
    skip: dict[str, tuple[float, tuple]] = {}

    def keep(store, key):
        def record(module, inputs, output=None):
            x = (inputs[0] if output is None else output).detach().to(torch.float64)
            total = x.transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=False).sum()
            store[key] = (float(total), tuple(x.shape))

        return record

    handles = []
    for norm, block, shortcut in residuals:
        handles.append(model.get_submodule(norm).register_forward_hook(keep(branch, block)))
        if shortcut is None:
            handles.append(model.get_submodule(block).register_forward_pre_hook(keep(skip, block)))
        else:
            handles.append(model.get_submodule(shortcut).register_forward_hook(keep(skip, block)))
    try:
        with bn_matched(model):
            model(probe_input(model, input_size, batch, seed))
    finally:
        for h in handles:
            h.remove()
    return {
        block: b / max(b + skip[block][0], 1e-300)
        for block, (b, shape) in branch.items()
        if block in skip and skip[block][1] == shape
    }


def _channel_correlation(out: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Correlation of ``out``'s channels (dim 1) over every other dim, float64 on the CPU, and its sample count."""
    z = out.detach().to(torch.float64).transpose(0, 1).reshape(out.shape[1], -1)
    z = z - z.mean(1, keepdim=True)
    cov = z @ z.T
    cov = 0.5 * (cov + cov.T)  # symmetric to the bit (the product's rounding is not)
    std = torch.diagonal(cov).clamp(min=0).sqrt()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    corr = (cov / (safe[:, None] * safe[None, :])).clamp(-1, 1)
    corr = torch.where((std > 0)[:, None] & (std > 0)[None, :], corr, torch.zeros_like(corr))
    corr.fill_diagonal_(1.0)
    return corr.cpu(), z.shape[1]


def _patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``module`` reads it: ``(N, C_in * kh * kw, positions)``, padding (timm's "same", non-zero modes)
    applied as the module's forward applies it."""
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
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def tap_means(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` as a layer sees it: ``(C,)`` for a linear, ``(C, kh, kw)`` per kernel tap for a conv
    (averaged over images and output positions, zero padding included), float64 on the CPU."""
    if isinstance(module, nn.Linear):
        x = x.detach().to(torch.float64)
        return x.reshape(-1, x.shape[-1]).mean(0).cpu()
    x = x.detach().to(torch.float64).mean(0, keepdim=True)  # (1, C, H, W)
    cols = _patches(module, x)
    kh, kw = module.kernel_size
    return cols[0].mean(-1).reshape(x.shape[1], kh, kw).cpu()


def tap_covariance(module: nn.Module, x: torch.Tensor, max_samples: int = 1 << 15) -> tuple[torch.Tensor, int]:
    """Covariance of the inputs one output row of ``module`` reads, over images and output positions, and the
    number of samples it was measured on: ``(G, d, d)`` float32 on the CPU, G the conv's groups (1 for a linear),
    d = (C_in / G) kh kw in the order of the weight's flattened row (channel, then tap; zero padding included).
    Centred: what is left of a weight change's output error once its mean is removed. At most ``max_samples``
    evenly spaced positions are used."""
    if isinstance(module, nn.Linear):
        cols = x.detach().to(torch.float32).reshape(-1, x.shape[-1]).T  # (C, n)
        groups = 1
    else:
        p = _patches(module, x.detach().to(torch.float32))  # (N, C kh kw, L)
        cols = p.transpose(0, 1).reshape(p.shape[1], -1)
        groups = module.groups
    step = -(-cols.shape[1] // max_samples)
    cols = cols[:, ::step].reshape(groups, -1, cols[:, ::step].shape[1])
    cols = cols - cols.mean(-1, keepdim=True)
    samples = cols.shape[-1]
    cov = (cols @ cols.transpose(1, 2)) / max(samples, 1)
    return (0.5 * (cov + cov.transpose(1, 2))).cpu(), samples


@torch.no_grad()
def probe_activation_ranges(
    model: nn.Module,
    names: list[str],
    input_size: tuple[int, ...],
    bits: int,
    image: ActRange | None = None,
    batch: int | None = None,
    seed: int = 0,
    method: str = "max",
) -> dict[str, tuple[ActRange, torch.Tensor | None]]:
    """The input grid of each named layer, chosen on its input under the BN-matched probe (``choose_range``'s
    ``method``), and the mean
    quantization error ``E[x^ - x]`` each layer then sees (per kernel tap, as ``tap_means``).

    Layers run in forward order and each sees the quantized input it will see after compression, so a layer's
    range is chosen on what the quantized layers before it pass on. A layer that reads the model's input (the
    stem) gets ``image``, the range of every normalised image, when given (its error is then not measured: the
    probe's Gaussian noise is not an image; ``image`` has its own bits). A module called twice keeps its first
    call's range. Layers the probe never reaches are missing from the result.
    """
    x0 = probe_input(model, input_size, batch, seed)
    found: dict[str, tuple[ActRange, torch.Tensor | None]] = {}

    def hook(name):
        def quantize(module, inputs):
            x = inputs[0]
            if name not in found:
                reads_image = image is not None and x.data_ptr() == x0.data_ptr() and x.shape == x0.shape
                act = image if reads_image else choose_range(x, bits, method)
                xq = fake_quantize(x, act.scale, act.zero_point, act.bits)
                found[name] = (act, None if reads_image else tap_means(module, xq - x))
                return (xq, *inputs[1:])
            act = found[name][0]
            return (fake_quantize(x, act.scale, act.zero_point, act.bits), *inputs[1:])

        return quantize

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with bn_matched(model):
            model(x0)
    finally:
        for h in handles:
            h.remove()
    return found


@dataclass
class TensorFlow:
    """Which module (or functional activation, named ``<relu>`` etc.) read and returned which tensor in one probe
    pass. Tensors are keyed by identity and version, so an in-place op (``ReLU(inplace=True)``, ``x += y``) makes
    a new key."""

    calls: list[tuple[str, tuple[int, int] | None, tuple[int, int] | None]]  # (module or op, input, output)
    values: dict[tuple[int, int], torch.Tensor]  # output key -> the tensor's values when it was returned
    model_input: tuple[int, int] | None
    model_output: tuple[int, int] | None

    def readers(self) -> dict[tuple[int, int], list[int]]:
        """Input key -> the calls (indices into ``calls``) that read it, in call order."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, (_, key, _) in enumerate(self.calls):
            if key is not None:
                out.setdefault(key, []).append(i)
        return out

    def first_call(self, name: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None] | None:
        return next(((i, o) for n, i, o in self.calls if n == name), None)


_serial = iter(range(1 << 62))
FUNCTIONAL_ACTIVATIONS = ("relu", "relu_", "relu6", "hardtanh", "hardtanh_")  # recorded as "<relu>" etc.


def _key(x) -> tuple[int, int] | None:
    """A tensor's identity for one pass: a serial number stamped on the object, and its in-place version."""
    if not isinstance(x, torch.Tensor):
        return None
    tag = getattr(x, "_udfc_probe_tag", None)
    if tag is None:
        tag = next(_serial)
        x._udfc_probe_tag = tag
    return (tag, x._version)


class _Activations(TorchFunctionMode):
    """Records functional ReLUs (``F.relu(x)``, ``x.relu()``) outside a module that read the same tensor."""

    def __init__(self, calls: list, open_inputs: list):
        super().__init__()
        self.calls, self.open_inputs = calls, open_inputs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        if name not in FUNCTIONAL_ACTIVATIONS or not isinstance(x, torch.Tensor):
            return func(*args, **(kwargs or {}))
        key = _key(x)
        out = func(*args, **(kwargs or {}))
        if key not in self.open_inputs:  # inside nn.ReLU's own forward: the module call is the record
            self.calls.append((f"<{name.rstrip('_')}>", key, _key(out)))
        return out


@torch.no_grad()
def probe_tensor_flow(
    model: nn.Module,
    input_size: tuple[int, ...],
    keep_values: set[str] | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> TensorFlow:
    """One BN-matched probe pass recording every module call (the first positional input it read, before any
    forward pre-hook of its own changes it, and the tensor it returned, before any forward hook changes it) and
    every functional ReLU.

    The outputs of the modules in ``keep_values`` are copied as they are returned (a later in-place op would
    change them). The root module is not recorded."""
    calls: list[tuple[str, tuple[int, int] | None, tuple[int, int] | None]] = []
    values: dict[tuple[int, int], torch.Tensor] = {}
    pending: dict[int, list[int]] = {}  # id(module) -> indices of its open calls
    open_inputs: list = []  # input keys of the module calls in progress
    keep_values = keep_values or set()

    def before(name):
        def record(module, args):
            key = _key(args[0]) if args else None
            pending.setdefault(id(module), []).append(len(calls))
            open_inputs.append(key)
            calls.append((name, key, None))

        return record

    def after(name):
        def record(module, args, output):
            i = pending[id(module)].pop()
            open_inputs.pop()
            key = _key(output)
            if key is not None and name in keep_values:
                values[key] = output.detach().clone()
            calls[i] = (name, calls[i][1], key)

        return record

    handles = []
    for name, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(before(name), prepend=True))
        handles.append(module.register_forward_hook(after(name), prepend=True))
    x0 = probe_input(model, input_size, batch, seed)
    x0_key = _key(x0)
    try:
        with bn_matched(model), _Activations(calls, open_inputs):
            out = model(x0)
    finally:
        for h in handles:
            h.remove()
    return TensorFlow(calls=calls, values=values, model_input=x0_key, model_output=_key(out))
