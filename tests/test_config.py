"""CompressionConfig: one definition of every option, shared by compress, compress_and_push and the CLI."""

import dataclasses
import inspect

import pytest

import udfc_hub
from udfc_hub import CompressionConfig, InvalidArgumentError, ops
from udfc_hub.cli import build_parser, config_options
from udfc_hub.config import CRITERIA, GRANULARITIES, MAX_BITS, MIN_BITS, NM_VARIANTS, PRESETS


def test_defaults_and_presets():
    cfg = CompressionConfig()
    assert (cfg.method, cfg.prune_ratio, cfg.bits, cfg.granularity) == ("udfc+", 0.3, 6, "channel")
    assert cfg.fit is None and cfg.resolved().fit == "relu"  # None = what the method implies
    for method, preset in PRESETS.items():
        resolved = CompressionConfig.preset(method).resolved()
        assert {k: getattr(resolved, k) for k in preset} == preset
    # an explicit value wins over the preset
    assert CompressionConfig(method="udfc", bias_correction=True).resolved().bias_correction is True


def test_frozen_validated_and_round_trips():
    cfg = CompressionConfig(prune_ratio=0.5, bits=4, method="udfc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 2
    with pytest.raises(InvalidArgumentError, match="bits must be an integer in 2..8"):
        cfg.replace(bits=9)
    assert CompressionConfig.from_dict(cfg.to_dict()) == cfg
    # field order; the activation options, bit_widths, correlations, rounding and refit only where they are not defaults
    optional = ("act_bits", "act_range", "grid", "bit_widths", "correlations", "rounding", "refit")
    assert list(cfg.to_dict()) == [f.name for f in dataclasses.fields(CompressionConfig) if f.name not in optional]
    wa = CompressionConfig(
        bits=4,
        act_bits=4,
        act_range="mse",
        grid="dorefa",
        bit_widths="mixed",
        correlations="probe",
        rounding="probe",
        refit="distilled",
    )
    assert list(wa.to_dict()) == [f.name for f in dataclasses.fields(CompressionConfig)]
    assert CompressionConfig.from_dict(wa.to_dict()) == wa
    assert isinstance(CompressionConfig(prune_ratio=1 / 2, alpha1=1).alpha1, float)


def test_unknown_options_and_a_positional_number_are_named():
    with pytest.raises(InvalidArgumentError, match="unknown compression option.*prune_rate"):
        CompressionConfig.build(prune_rate=0.3)
    with pytest.raises(InvalidArgumentError, match="config must be a udfc_hub.CompressionConfig.*by keyword"):
        CompressionConfig.build(0.3)


def test_math_layer_accepts_what_the_config_accepts():
    assert (CRITERIA, NM_VARIANTS, GRANULARITIES) == (ops.CRITERIA, ops.NM_VARIANTS, ops.GRANULARITIES)
    assert (MIN_BITS, MAX_BITS) == (ops.MIN_BITS, ops.MAX_BITS)


def test_every_option_is_a_cli_flag_with_the_config_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["compress"]
    dests = {a.dest for a in sub._actions}
    assert set(CompressionConfig.option_names()) <= dests
    # no flag given: no option passed, so the CLI's defaults are CompressionConfig's
    args = parser.parse_args(["compress", "resnet18", "--out", "x"])
    assert config_options(args) == {}
    args = parser.parse_args(
        ["compress", "resnet18", "--out", "x", "--prune", "0.5", "--bits", "none", "--no-bias-correction",
         "--nm-lambda", "0.5", "--method", "nm"]
    )  # fmt: skip
    assert CompressionConfig.build(**config_options(args)) == CompressionConfig(
        prune_ratio=0.5, bits=None, bias_correction=False, nm_lambda=0.5, method="nm"
    )


def test_every_entry_point_resolves_to_compress_defaults():
    # compress and compress_and_push take the options only through CompressionConfig: no default of their own
    for fn in (udfc_hub.compress, udfc_hub.compress_and_push):
        params = inspect.signature(fn).parameters
        assert not set(CompressionConfig.option_names()) & set(params), fn.__name__
        assert params["config"].default is None
    args = build_parser().parse_args(["compress", "resnet18", "--out", "x"])
    assert CompressionConfig.build(**config_options(args)) == CompressionConfig.build()


def test_sweep_cells_resolve_to_compress_defaults():
    # a sweep sets only its grid (prune ratio, bits, method); every other option is compress's default, from the
    # Python API and from the CLI alike
    from udfc_hub.sweeps import plan

    (cell,) = plan(["resnet18"], [0.3], [6], ["udfc+"], None)
    assert cell.config == CompressionConfig.build(prune_ratio=0.3, bits=6)
    assert inspect.signature(udfc_hub.sweep).parameters["methods"].default == (CompressionConfig().method,)
    args = build_parser().parse_args(["sweep", "resnet18", "--out", "x"])
    assert config_options(args) == {} and args.methods == [CompressionConfig().method]
