"""``refit="distilled"``: images distilled from the model's BatchNorm statistics, and a layer-by-layer
least-squares refit of the compressed model on them.

No data is used. ``distill_images`` optimises a batch of noise images until every BatchNorm of the input model
sees, on that batch, the mean and standard deviation it recorded in training (the BN-statistics inversion of
ZeroQ, Cai et al. 2020, also DeepInversion's main term, Yin et al. 2020). ``refit_layers`` then runs those images
through the original and the compressed model once each: each refitted layer of the compressed model, reached in
forward order, gets the weights and intercept that best reproduce (least squares) the original layer's output
from the inputs the compressed model itself gives it, so it also absorbs what pruning and rounding changed
upstream; a quantized layer is quantized again right there, before the layers after it read it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn

from .cache import load_distilled, store_distilled
from .errors import InvalidArgumentError
from .ops.refit import RefitStats, best_intercept, refit_error, solve_refit
from .probe import _patches, input_device_dtype
from .surgery import set_param

__all__ = [
    "DISTILL_STEPS",
    "JITTER",
    "JITTER_MIN_SIDE",
    "MIN_ROWS_PER_INPUT",
    "distill_images",
    "recorded_norms",
    "refit_layers",
]

DISTILL_STEPS = 1000  # Adam steps of the BN-statistics inversion
DISTILL_LR = 0.1
JITTER = 30 / 224  # the largest random shift per step, as a fraction of the image side (DeepInversion: 30 px at 224)
JITTER_MIN_SIDE = 128  # smaller images are not shifted by default (CIFAR's 32x32: a loss, docs/research-log.md)
MIN_ROWS_PER_INPUT = 4  # fewer samples (images x positions) per input read: the prior weights decide (a note says so)


def distill_images(
    model: nn.Module,
    input_size: tuple[int, ...],
    n: int,
    steps: int = DISTILL_STEPS,
    seed: int = 0,
    lr: float = DISTILL_LR,
    progress: bool = False,
    jitter: float | None = None,
) -> tuple[torch.Tensor, float, float]:
    """``n`` inputs of ``input_size`` on which every BatchNorm of ``model`` (in eval mode: its running statistics
    are used, and never changed) sees the mean and standard deviation it recorded. Adam with a cosine schedule on
    the gaps, each channel's squared in units of its recorded variance, averaged per BN and summed over the BNs
    (so that every layer counts, whatever its scale), from standard-normal noise (seed ``seed``). Each step sees the
    batch shifted by a random offset of up to ``jitter`` times the image side (circularly) and, half the time,
    mirrored (DeepInversion's image prior: the statistics must hold wherever the content sits, which makes the
    images less like noise tuned to one position); the gaps returned are those of the unshifted batch. By
    default (None): ``JITTER`` for images at least ``JITTER_MIN_SIDE`` pixels on their shorter side, else none.
    Only the images get gradients: the model's parameters and their ``.grad`` are left alone. The last result is
    kept in memory, and every result on disk (``udfc_hub.cache``), for a model with the same weights and arguments:
    a sweep over settings, or a second compression of the same model, distils once. ``progress``: a progress bar
    over the steps. Returns (images, initial loss, final loss)."""
    side = min(input_size[-2:]) if len(input_size) == 3 else 0
    if jitter is None:
        jitter = JITTER if side >= JITTER_MIN_SIDE else 0.0
    shift = round(jitter * side)
    key = (_fingerprint(model), tuple(input_size), n, steps, seed, lr, shift)
    if key in _CACHE:
        images, first, last = _CACHE[key]
        return images.clone(), first, last
    disk_key = hashlib.blake2b(repr(key).encode(), digest_size=20).hexdigest()
    stored = load_distilled(disk_key)  # distilled before, by this process or another (udfc_hub.cache)
    if stored is not None:
        device, dtype = input_device_dtype(model)
        images, first, last = stored[0].to(device=device, dtype=dtype), stored[1], stored[2]
        _CACHE.clear()
        _CACHE[key] = (images, first, last)
        return images.clone(), first, last
    norms = recorded_norms(model)
    if not norms:
        raise InvalidArgumentError(
            "distill_images needs BatchNorm layers with running statistics (track_running_stats=True); this model "
            "has none to distil images from."
        )
    device, dtype = input_device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_size), generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
    was_training = model.training
    try:
        model.eval()
        first, last = _invert(model, norms, x, steps, lr, progress, shift, seed)
    finally:
        model.train(was_training)
    _CACHE.clear()
    _CACHE[key] = (x.detach(), first, last)
    store_distilled(disk_key, x.detach(), first, last)
    return x.detach().clone(), first, last


_CACHE: dict[tuple, tuple[torch.Tensor, float, float]] = {}


def _invert(model, norms, x, steps: int, lr: float, progress: bool, shift: int = 0, seed: int = 0):
    """Adam on ``x`` (in place) against the BN gaps of randomly shifted (up to ``shift`` pixels) and mirrored
    views of it; the losses (of ``x`` itself) before the first and after the last step."""
    gaps: list[torch.Tensor] = []
    views = torch.Generator().manual_seed(seed + 1)

    def view() -> torch.Tensor:
        if shift == 0:
            return x
        dy, dx = torch.randint(-shift, shift + 1, (2,), generator=views).tolist()
        v = torch.roll(x, (dy, dx), dims=(-2, -1))
        return v.flip(-1) if torch.rand((), generator=views) < 0.5 else v

    def record(module, inputs):
        a = inputs[0]
        dims = [d for d in range(a.ndim) if d != 1]
        mean, var = a.mean(dims), a.var(dims, unbiased=False)
        std, ref = (var + module.eps).sqrt(), (module.running_var + module.eps).sqrt()
        gap = (mean - module.running_mean) ** 2 + (std - ref) ** 2
        gaps.append((gap / ref**2).mean())

    def loss(images: torch.Tensor) -> torch.Tensor:
        gaps.clear()
        model(images)
        return torch.stack(gaps).sum()

    handles = [m.register_forward_pre_hook(record) for m in norms]
    opt = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    first = float("nan")
    steps_done = range(steps)
    if progress:
        from tqdm.auto import tqdm

        steps_done = tqdm(steps_done, desc="distilling images", unit="step")
    try:
        with torch.enable_grad():
            for step in steps_done:
                if step == 0:
                    first = float(loss(x).detach())
                value = loss(view())
                (x.grad,) = torch.autograd.grad(value, [x])
                opt.step()
                schedule.step()
            last = float(loss(x).detach())  # the loss of the images returned
    finally:
        for h in handles:
            h.remove()
    return (last if steps == 0 else first), last


def recorded_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms of ``model`` that recorded running statistics in training."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]


def _fingerprint(model: nn.Module) -> str:
    """A digest of the model's class, parameter and buffer names, shapes and values."""
    h = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=16)
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What one output row of ``module`` reads, as (groups, samples, d) in the weight's flattened row order."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    p = _patches(module, x)  # (N, C kh kw, L)
    g = module.groups
    n, cd, length = p.shape
    return p.reshape(n, g, cd // g, length).permute(1, 0, 3, 2).reshape(g, n * length, cd // g)


def _targets(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's output as (groups, samples, outputs per group), rows in the order of ``_rows``."""
    if isinstance(module, nn.Linear):
        return y.reshape(1, -1, y.shape[-1])
    g = module.groups
    n, o = y.shape[:2]
    return y.reshape(n, g, o // g, -1).permute(1, 0, 3, 2).reshape(g, -1, o // g)


@torch.no_grad()
def refit_layers(
    work: nn.Module,
    original: nn.Module,
    names: list[str],
    images: torch.Tensor,
    kept_out: dict[str, torch.Tensor],
    norms: dict[str, tuple[nn.Module, nn.Module]],
    requantize: Callable[[str, nn.Module, RefitStats], None],
    residuals: dict[str, tuple[str, str | None]] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Refit the named convs / linears of ``work`` (the compressed copy of ``original``) on ``images``, in forward
    order, in one forward pass of each model.

    ``kept_out[name]``: the original output channels a pruned layer kept. ``norms[name]``: (the layer's BN in
    ``work``, the same BN in ``original``) when a BatchNorm follows the layer; the refit's intercept goes into its
    running mean, and its statistics and affine parameters are the original's again (the target is the original
    layer's output before that BN, so the compensation's corrections there no longer apply); without one, the
    intercept goes into the bias, or there is none when the layer has no bias. ``requantize(name, module,
    stats)`` is called with the refitted float weight in place (a quantized layer rounds it again there).
    ``residuals[name] = (block, shortcut)``: the layer's BN output is added to ``shortcut(block input)`` (the block
    input itself when ``shortcut`` is None). Its target then also makes up for what the compressed shortcut
    branch changed, in the layer's pre-BN units (the sum after the addition is what the next blocks read).
    Each layer's solve leans on its current (compensated) weights as a prior (``ops.refit.solve_refit``), which
    decides where the samples are few. Returns each layer's relative output error on the images
    (``ops.refit_error``) and the layers with fewer than ``MIN_ROWS_PER_INPUT`` samples per input they read."""
    run = _Refit(work, original, kept_out, norms, requantize, residuals or {})
    was = original.training, work.training
    try:
        original.eval()
        work.eval()
        with run.hooks(original, names, run.keep_target, run.shortcut_out, through_shortcut=True):
            original(images)
        with run.hooks(work, names, run.refit, run.block_in, through_shortcut=False):
            work(images)
    finally:
        original.train(was[0])
        work.train(was[1])
    return run.errors, run.sparse


class _Refit:
    """The state of one ``refit_layers`` call: targets recorded in the original's pass, layers refitted in the
    compressed model's."""

    def __init__(self, work, original, kept_out, norms, requantize, residuals):
        self.work, self.original = work, original
        self.kept_out, self.norms, self.requantize, self.residuals = kept_out, norms, requantize, residuals
        self.targets: dict[str, torch.Tensor] = {}
        self.shortcut_out: dict[str, torch.Tensor] = {}  # the original model's shortcut output, per layer
        self.block_in: dict[str, torch.Tensor] = {}  # the compressed model's block input, per layer
        self.errors: dict[str, float] = {}
        self.sparse: list[str] = []

    @contextmanager
    def hooks(self, model, names, layer_hook, store, through_shortcut: bool):
        """``layer_hook(name)`` on each named layer (forward hooks in the original, pre-hooks in the copy), and
        a pre-hook on each residual block that keeps its input (through the shortcut: the original's)."""
        handles = []
        try:
            for name in names:
                module = model.get_submodule(name)
                add = module.register_forward_hook if model is self.original else module.register_forward_pre_hook
                handles.append(add(layer_hook(name)))
                if name in self.residuals:
                    block = model.get_submodule(self.residuals[name][0])
                    handles.append(
                        block.register_forward_pre_hook(self._keep_block_input(model, name, store, through_shortcut))
                    )
            yield
        finally:
            for h in handles:
                h.remove()

    def _keep_block_input(self, model, layer, store, through_shortcut):
        shortcut = self.residuals[layer][1]

        def record(module, inputs):
            if layer not in store:
                x = inputs[0].detach()
                run = through_shortcut and shortcut is not None
                store[layer] = model.get_submodule(shortcut)(x) if run else x

        return record

    def keep_target(self, name):
        def record(module, inputs, output):
            if name not in self.targets:  # a shared module: its first call only
                self.targets[name] = (output if name not in self.kept_out else output[:, self.kept_out[name]]).detach()

        return record

    def refit(self, name):
        def run(module, inputs):
            if name in self.errors or name not in self.targets:
                return
            a = _rows(module, inputs[0].detach())
            t = _targets(module, self._target(name))
            if a.shape[1] < MIN_ROWS_PER_INPUT * (a.shape[2] + 1):
                self.sparse.append(name)
            stats = RefitStats(a.shape[0], a.shape[2], t.shape[2])
            stats.add(a, t)
            self._solve(name, module, stats)

        return run

    def _target(self, name: str) -> torch.Tensor:
        """The original layer's output, plus (a residual block's last layer) what the compressed shortcut lost,
        in pre-BN units."""
        y = self.targets.pop(name)
        if name not in self.residuals or name not in self.norms or name in self.kept_out:
            return y
        shortcut = self.residuals[name][1]
        x = self.block_in.pop(name)
        drift = self.shortcut_out.pop(name) - (x if shortcut is None else self.work.get_submodule(shortcut)(x))
        ref = self.norms[name][1]
        if ref.weight is None or drift.shape != y.shape:
            return y
        gain = ref.weight / (ref.running_var + ref.eps).sqrt()  # d(BN output) / d(BN input)
        gain = torch.where(gain.abs() > 1e-8, gain, torch.full_like(gain, 1e-8))
        return y + drift / gain.reshape(1, -1, *([1] * (y.ndim - 2)))

    def _solve(self, name: str, module: nn.Module, stats: RefitStats) -> None:
        pair = self.norms.get(name)
        has_intercept = pair is not None or module.bias is not None
        current = module.weight.detach().reshape(stats.at.shape[0], -1, stats.aa.shape[-1])
        w, _ = solve_refit(stats, intercept=has_intercept, prior=current)
        set_param(module, "weight", w.reshape(module.weight.shape).to(module.weight))
        self.requantize(name, module, stats)
        wq = module.weight.detach().reshape(w.shape)
        b = best_intercept(stats, wq) if has_intercept else torch.zeros(w.shape[:2], dtype=torch.float64)
        self.errors[name] = refit_error(stats, wq, b)
        b = b.reshape(-1)
        if pair is not None:
            norm, ref = pair
            index = self.kept_out.get(name)
            for key in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(ref, key)
                if value is not None:
                    set_param(norm, key, value[index] if index is not None else value)
            set_param(norm, "running_mean", norm.running_mean - b.to(norm.running_mean))
        elif module.bias is not None:
            set_param(module, "bias", b.to(module.bias))
