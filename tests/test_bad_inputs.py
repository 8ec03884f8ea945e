"""Bad inputs and faults, table-driven: every case ends in a udfc-hub error that names the problem (or a correct
result), and nothing of the user's is lost or half-written. Grows with every bug found."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors import SafetensorError

import udfc_hub
from helpers import run_in_process
from udfc_hub import ArtifactError, InvalidArgumentError, UdfcError, UnsupportedModelError

DATA = Path(__file__).parent / "data"
TIMM_V1 = DATA / "format1-cifar_resnet20-p50-w3"
HF_V1 = DATA / "format1-hf-resnet-p50-w3"


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet20").eval()


@pytest.fixture(scope="module")
def r20_result(r20):
    return udfc_hub.compress(r20, prune_ratio=0.5, bits=3)


# --- compress: options ------------------------------------------------------------------------------------------

OPTION_CASES = [
    ({"prune_ratio": 1.0}, r"prune_ratio must be a number in \[0, 1\)"),
    ({"prune_ratio": -0.1}, "prune_ratio"),
    ({"prune_ratio": "0.3"}, "prune_ratio"),
    ({"prune_ratio": True}, "prune_ratio"),
    ({"prune_ratio": float("nan")}, "prune_ratio"),
    ({"prune_ratio": None}, "prune_ratio"),
    ({"bits": 1}, "bits must be an integer in 2..8"),
    ({"bits": 9}, "bits must be an integer in 2..8"),
    ({"bits": 4.5}, "bits must be an integer"),
    ({"bits": "6"}, "bits must be an integer"),
    ({"bits": True}, "bits must be an integer"),
    ({"method": "magic"}, r"method must be one of udfc\+, udfc, nm, prune, rtn; got 'magic'"),
    ({"method": None}, "method must be one of"),
    ({"criterion": "l3"}, "criterion must be one of l1, l2"),
    ({"granularity": "row"}, "granularity must be one of tensor, channel"),
    ({"fit": "cubic"}, "fit must be one of relu, linear"),
    ({"nonnegative": None}, "nonnegative must be True or False"),
    ({"nonnegative": "yes"}, "nonnegative must be True or False"),
    ({"bias_correction": "yes"}, "bias_correction must be True or False"),
    ({"variance_correction": 0}, "variance_correction must be True or False"),
    ({"quant_correction": "t"}, "quant_correction must be one of none, udfc, scale"),
    ({"layer_ratios": "greedy"}, "layer_ratios must be one of uniform, adaptive"),
    ({"correlations": "data"}, r"correlations must be one of filters, probe \(or None for the method's default\)"),
    ({"alpha1": -1.0}, r"alpha1 must be a number in \[0, inf\]"),
    ({"alpha2": float("nan")}, "alpha2 must be a number"),
    ({"reference": "x"}, "reference must be one of compensated, original"),
    ({"nm_variant": "x"}, "nm_variant must be one of code, derived"),
    ({"nm_lambda": 2.0}, r"nm_lambda must be a number in \[0, 1\]"),
    ({"nm_threshold": -2}, r"nm_threshold must be a number in \[-1, 1\]"),
    ({"prune_rate": 0.3}, "unknown compression option.*prune_rate"),
    ({"method": "nm", "fit": "relu"}, r"fit applies to method udfc or udfc\+ only"),
    ({"nonnegative": True}, r"nonnegative=True needs method 'udfc' or 'udfc\+' with fit='linear'"),
    ({"bit_widths": "mixed", "bits": None}, "bit_widths='mixed' spreads the weight bits"),
    ({"bit_widths": "auto"}, "bit_widths must be one of uniform, mixed"),
    ({"rounding": "gptq"}, "rounding must be one of nearest, probe"),
    ({"rounding": "probe", "bits": None}, "rounding='probe' chooses how weights are rounded to bits; set bits"),
    ({"refit": "data"}, "refit must be one of none, distilled"),
    ({"prune_ratio": 0, "bits": None}, "Nothing to do"),
]


@pytest.mark.parametrize("options,match", OPTION_CASES)
def test_bad_options(r20, options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        udfc_hub.compress(r20, **({"prune_ratio": 0.3, "bits": 6} | options))


def test_a_number_where_the_config_goes(r20):
    with pytest.raises(InvalidArgumentError, match="config must be a udfc_hub.CompressionConfig.*by keyword"):
        udfc_hub.compress(r20, 0.3)


# --- compress: models -------------------------------------------------------------------------------------------


def _tamper_model(kind):
    model = timm.create_model("cifar_resnet20").eval()
    with torch.no_grad():
        if kind == "nan weight":
            model.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
        elif kind == "inf running_var":
            model.layer2[1].bn1.running_var[3] = float("inf")
        elif kind == "float16":
            model = model.half()
        elif kind == "bfloat16":
            model = model.bfloat16()
    return model


MODEL_CASES = [
    ("resnet34", InvalidArgumentError, "must be a torch.nn.Module"),
    (None, InvalidArgumentError, "must be a torch.nn.Module"),
    ("nan weight", InvalidArgumentError, "NaN or infinite values in layer1.0.conv1.weight"),
    ("inf running_var", InvalidArgumentError, "NaN or infinite values in layer2.1.bn1.running_var"),
    ("float16", InvalidArgumentError, r"torch.float16.*model.float\(\)"),
    ("bfloat16", InvalidArgumentError, r"torch.bfloat16.*model.float\(\)"),
    ("meta", InvalidArgumentError, "meta device"),
    ("unsupported", UnsupportedModelError, "No udfc_hub adapter supports"),
]


@pytest.mark.parametrize("kind,error,match", MODEL_CASES)
def test_bad_models(kind, error, match):
    if kind in ("resnet34", None):
        model = kind
    elif kind == "meta":
        with torch.device("meta"):
            model = timm.create_model("cifar_resnet20")
    elif kind == "unsupported":
        model = nn.Sequential(nn.ReLU())  # no weight layer to compress
    else:
        model = _tamper_model(kind)
    with pytest.raises(error, match=match):
        udfc_hub.compress(model, prune_ratio=0.3, bits=6)


# --- save_pretrained --------------------------------------------------------------------------------------------

SAVE_CASES = [
    ({"repo_id": "no-namespace"}, "repo_id 'no-namespace' is not a valid Hub repo id"),
    ({"repo_id": "me/bad name"}, "is not a valid Hub repo id"),
    ({"repo_id": 'me/x"); import os; os.system("echo'}, "is not a valid Hub repo id"),
    ({"repo_id": "me/<script>"}, "is not a valid Hub repo id"),
    ({"base_model": "timm/resnet 50"}, "base_model 'timm/resnet 50' is not a valid Hub repo id"),
    ({"accuracy": {"top5": 90.0}}, "accuracy must be a dict with a measured 'top1'"),
    ({"accuracy": {"top1": float("nan")}}, r"accuracy\['top1'\] must be a percentage"),
    ({"accuracy": {"top1": 150}}, r"accuracy\['top1'\] must be a percentage"),
    ({"accuracy": {"top1": "90"}}, r"accuracy\['top1'\] must be a percentage"),
    ({"accuracy": {"top1": 90, "base_top1": float("inf")}}, r"accuracy\['base_top1'\]"),
    ({"accuracy": {"top1": 90, "n": 0}}, r"accuracy\['n'\] must be a positive number"),
    ({"accuracy": {"top1": 90, "n": 100, "of": 50}}, r"accuracy\['of'\] must be the data set's number of images"),
    ({"accuracy": {"top1": 90, "of": 50}}, r"accuracy\['of'\] must be .* with n given"),
    ({"license": "MIT License"}, "license must be a Hub license id such as 'apache-2.0'"),
    ({"license": ""}, "license must be a Hub license id"),
    ({"accuracy": {"top1": 90, "dataset": "x" * 300}}, r"accuracy\['dataset'\] must be a name"),
    ({"accuracy": {"top1": 90, "speed": 1}}, "accuracy has unknown keys"),
    ({"accuracy": [90]}, "accuracy must be a dict"),
]


@pytest.mark.parametrize("kwargs,match", SAVE_CASES)
def test_bad_save_arguments_write_nothing(r20_result, tmp_path, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        udfc_hub.save_pretrained(r20_result, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []  # no folder, no temp folder


@pytest.mark.parametrize("what", ["file", "non-empty folder"])
def test_save_never_replaces_what_it_was_not_asked_to(r20_result, tmp_path, what):
    target = tmp_path / "out"
    if what == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="not a folder" if what == "file" else "not empty"):
        udfc_hub.save_pretrained(r20_result, target)
    assert (target.read_text() if what == "file" else (target / "mine.txt").read_text()) == "mine"


@pytest.mark.parametrize("thing", ["a string", "a plain module"])
def test_save_what_is_not_a_compressed_model(tmp_path, thing):
    value = "resnet18" if thing == "a string" else nn.Linear(2, 2)
    with pytest.raises(InvalidArgumentError, match="save_pretrained takes the result of udfc_hub.compress"):
        udfc_hub.save_pretrained(value, tmp_path / "out")


@pytest.mark.parametrize("kwargs", [dict(act_layer="gelu"), dict(drop_rate=0.5, act_layer="silu")])
def test_a_model_that_would_not_reload_is_never_written(tmp_path, kwargs):
    model = timm.create_model("resnet18", **kwargs).eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6)
    with pytest.raises(ArtifactError, match="reloads to a different network.*nothing was written"):
        udfc_hub.save_pretrained(result, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("resnet18", dict(in_chans=1)),
        ("resnet18", dict(global_pool="max")),
        ("vit_tiny_patch16_224", dict(img_size=64)),
    ],
)
def test_recorded_constructor_arguments_reload_exactly(tmp_path, arch, kwargs):
    model = timm.create_model(arch, **kwargs).eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6)
    folder = udfc_hub.save_pretrained(result, tmp_path / "out")  # verify=True: the reload gave the same logits
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert set(loaded.udfc_manifest.base_args) == set(kwargs)
    assert set(kwargs) <= set(json.loads((folder / "config.json").read_text())["model_args"])


def test_saved_folders_follow_the_umask(r20_result, tmp_path):
    old = os.umask(0o027)
    try:
        folder = udfc_hub.save_pretrained(r20_result, tmp_path / "out")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750


def test_a_folder_that_appears_during_the_save_is_not_touched(r20_result, tmp_path, monkeypatch):
    target = tmp_path / "out"
    render = udfc_hub.hub.artifact.render_card

    def another_process_writes_there(*args, **kwargs):  # a real second process creates the folder mid-save
        code = f"import pathlib; p = pathlib.Path({str(target)!r}); p.mkdir(); (p / 'theirs.txt').write_text('x')"
        subprocess.run([sys.executable, "-c", code], check=True)
        return render(*args, **kwargs)

    monkeypatch.setattr(udfc_hub.hub.artifact, "render_card", another_process_writes_there)
    with pytest.raises(InvalidArgumentError, match="appeared while saving and is not empty; nothing was replaced"):
        udfc_hub.save_pretrained(r20_result, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our temp folder is gone
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]


_KILLED_SAVE = """
import sys, time, timm, torch, udfc_hub
import udfc_hub.hub.artifact as artifact
render = artifact.render_card
def slow(*a, **k):
    print("writing", flush=True)
    time.sleep(60)
    return render(*a, **k)
artifact.render_card = slow
result = udfc_hub.compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0.5, bits=3)
udfc_hub.save_pretrained(result, sys.argv[1], overwrite=True)
"""


def test_kill_during_save_leaves_the_old_folder_and_the_next_save_cleans_up(r20_result, tmp_path):
    target = tmp_path / "out"
    udfc_hub.save_pretrained(r20_result, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # inside the save, files half written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old folder, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(leftovers) == 1
    udfc_hub.save_pretrained(r20_result, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the dead process's temp folder is removed


def test_overwrite_swaps_the_whole_folder(r20_result, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    udfc_hub.save_pretrained(r20_result, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_card_strings_are_escaped(r20_result, tmp_path):
    folder = udfc_hub.save_pretrained(
        r20_result, tmp_path / "<b>x</b>", accuracy={"top1": 50.0, "dataset": "<img src=x onerror=alert(1)>"}
    )
    text = (folder / "README.md").read_text()
    body = text.split("---", 2)[2]
    assert "<b>" not in body and "<img" not in body and "&lt;img src=x onerror=alert\\(1\\)&gt;" in body


# --- fresh installs: transformers' kernelized load ---------------------------------------------------------------


@pytest.mark.parametrize("use_kernels", ["YES", "NO"])
def test_twins_save_and_load_with_and_without_hub_kernels(use_kernels, tmp_path, monkeypatch):
    """transformers 5.2x kernelizes every model at the end of from_pretrained (when the `kernels` package is
    installed, as transformers itself now requires). A packed layer's float weight is not in the file, so it must be
    derived from its codes as soon as they load: a weight left on the meta device broke every save and load. The
    spy records what transformers' post-load step saw."""
    if use_kernels == "YES":
        pytest.importorskip("kernels", reason="the `kernels` package is not installed: nothing kernelizes")
    monkeypatch.setenv("USE_HUB_KERNELS", use_kernels)
    from transformers import AutoModelForImageClassification, PreTrainedModel

    seen = []
    post_load = PreTrainedModel.set_use_kernels

    def spy(model, *args, **kwargs):
        seen.append([name for name, p in model.named_parameters() if p.is_meta])
        return post_load(model, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", spy)
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 1], layer_type="bottleneck")
    result = udfc_hub.compress(ResNetForImageClassification(config).eval(), prune_ratio=0.5, bits=4)
    folder = udfc_hub.save_pretrained(result, tmp_path / "r")  # reloads the folder before it keeps it
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert seen and all(meta == [] for meta in seen), seen
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x).logits, result.model(x).logits)


# --- tampered artifacts -----------------------------------------------------------------------------------------


def _edit_config(folder, fn):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config))


def _args(c):
    return c["model_args"]


def _header(folder):
    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8 : 8 + n])


def _write_header(folder, raw, n, header):
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    (folder / "model.safetensors").write_bytes(raw[:8] + text.ljust(n) + raw[8 + n :])


def _nan_scale(folder):
    raw, n, header = _header(folder)
    start, _ = header["conv1.weight_scale"]["data_offsets"]
    at = 8 + n + start
    (folder / "model.safetensors").write_bytes(raw[:at] + struct.pack("<f", float("nan")) + raw[at + 4 :])


def _set_tensor(folder, key, fn):
    """Rewrite tensor ``key`` of the weights file in place (its header untouched) with ``fn(tensor)``; where
    config.json records a digest, record the new file's, as a hostile file would: the bounds must hold alone."""
    raw, n, header = _header(folder)
    info = header[key]
    start, stop = info["data_offsets"]
    dtype = {"F32": torch.float32, "I32": torch.int32, "U8": torch.uint8}[info["dtype"]]
    values = torch.frombuffer(bytearray(raw[8 + n + start : 8 + n + stop]), dtype=dtype).reshape(info["shape"])
    new = fn(values.clone()).to(dtype).contiguous().numpy().tobytes()
    assert len(new) == stop - start
    (folder / "model.safetensors").write_bytes(raw[: 8 + n + start] + new + raw[8 + n + stop :])
    config = json.loads((folder / "config.json").read_text())
    if "weights_sha256" in config["udfc"]:
        config["udfc"]["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        (folder / "config.json").write_text(json.dumps(config))


def _first(value):
    def fn(t):
        t.view(-1)[0] = value
        return t

    return fn


def _lying_header(folder):
    raw, n, header = _header(folder)
    header["linear.weight_scale"]["shape"] = [99, 1]  # same length: the header keeps its size
    _write_header(folder, raw, n, header)


TAMPER = {
    "bits 99": (lambda f: _edit_config(f, lambda c: _args(c).update(bits=99)), "bits must be an integer in 2..8"),
    "negative width": (
        lambda f: _edit_config(f, lambda c: _args(c)["channels"].update({"layer1.0.conv1": -3})),
        "channels must map layer names to widths",
    ),
    "huge width": (
        lambda f: _edit_config(f, lambda c: _args(c)["channels"].update({"layer1.0.conv1": 10**9})),
        "channels must map layer names to widths",
    ),
    "wrong width": (
        lambda f: _edit_config(f, lambda c: _args(c)["channels"].update({"layer1.0.conv1": 10})),
        "has shape",
    ),
    "huge scale shape": (
        lambda f: _edit_config(f, lambda c: _args(c)["quantized_layers"].update({"conv1": [10**6, 10**6, 1, 1]})),
        "has shape|scale",
    ),
    "huge num_classes": (lambda f: _edit_config(f, lambda c: c.update(num_classes=10**9)), "has shape"),
    "norm listed as quantized": (
        lambda f: _edit_config(f, lambda c: _args(c)["quantized_layers"].update({"bn1": [16, 1, 1, 1]})),
        "bn1",
    ),
    "unknown layer": (
        lambda f: _edit_config(f, lambda c: _args(c)["channels"].update({"nope.conv": 3})),
        "nope.conv",
    ),
    "no model_args": (lambda f: _edit_config(f, lambda c: c.pop("model_args")), "model_args"),
    "no udfc block": (lambda f: _edit_config(f, lambda c: c.pop("udfc")), "no udfc block"),
    "version only in udfc": (
        lambda f: _edit_config(f, lambda c: c["udfc"].update(format_version=6)),
        "format version 6",
    ),
    "version only in model_args": (
        lambda f: _edit_config(f, lambda c: _args(c).update(format_version=6)),
        "format version 6",
    ),
    "empty global_pool": (lambda f: _edit_config(f, lambda c: c.update(global_pool="")), "global_pool|cannot run"),
    "bad base architecture": (
        lambda f: _edit_config(f, lambda c: _args(c).update(base_architecture="")),
        "base_architecture",
    ),
    "markup in the base architecture": (
        lambda f: _edit_config(f, lambda c: _args(c).update(base_architecture="resnet18`<b>")),
        "base_architecture",
    ),
    "invalid recorded settings": (
        lambda f: _edit_config(f, lambda c: _args(c)["provenance"]["settings"].update(bits=99)),
        "recorded compression settings are invalid",
    ),
    "no provenance": (lambda f: _edit_config(f, lambda c: _args(c).pop("provenance")), "provenance"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    "config a list": (lambda f: (f / "config.json").write_text("[1, 2]"), "not a JSON object"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "truncated weights": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
        "truncated or corrupt",
    ),
    "header lies": (_lying_header, "truncated or corrupt|has shape"),
    "NaN scale": (_nan_scale, "conv1.weight_scale holds NaN"),
    # weight scales are max |w| per channel: >= 0, normal, bounded; 0 only for an all-zero channel (one code)
    "zero weight scale": (
        lambda f: _set_tensor(f, "layer1.0.conv2.weight_scale", _first(0.0)),
        "layer1.0.conv2.weight_scale is 0 for a channel whose codes differ",
    ),
    "negated weight scales": (
        lambda f: _set_tensor(f, "layer2.0.conv1.weight_scale", lambda t: -t),
        r"layer2.0.conv1.weight_scale holds -[0-9.]+; a weight scale is 0 or in",
    ),
    "subnormal weight scale": (
        lambda f: _set_tensor(f, "linear.weight_scale", _first(1e-40)),
        r"linear.weight_scale holds 9.99995e-41; a weight scale is 0 or in \[1.17549e-38, 10000\]",
    ),
    "huge weight scale": (
        lambda f: _set_tensor(f, "conv1.weight_scale", _first(1e30)),
        r"conv1.weight_scale holds 1e\+30",
    ),
}


def _set_width(args, name, width):
    args["channels"][name] = width
    args["shapes"][name][0] = width


# format 2 (every resized module's shape in config.json): the cases that concern the shapes
TAMPER_V2 = {
    "wrong width": (lambda f: _edit_config(f, lambda c: _set_width(_args(c), "layer1.0.conv1", 10)), "has shape"),
    "width disagrees with shape": (
        lambda f: _edit_config(f, lambda c: _args(c)["channels"].update({"layer1.0.conv1": 10})),
        "kept channels of 'layer1.0.conv1' \\(10\\) disagree",
    ),
    "wider than the base": (
        lambda f: _edit_config(f, lambda c: _set_width(_args(c), "layer1.0.conv1", 40)),
        "only loses channels",
    ),
    "huge shape": (
        lambda f: _edit_config(f, lambda c: _args(c)["shapes"].update({"conv1": [10**9, 3, 3, 3]})),
        "shapes must map module names to weight shapes",
    ),
    "shape of an unknown module": (
        lambda f: _edit_config(f, lambda c: _args(c)["shapes"].update({"nope.conv": [3, 3]})),
        "nope.conv",
    ),
    "kernel resized": (
        lambda f: _edit_config(f, lambda c: _args(c)["shapes"]["layer1.0.conv2"].__setitem__(2, 1)),
        "only loses channels",
    ),
}


@pytest.fixture(scope="module")
def saved_v2(tmp_path_factory):
    torch.manual_seed(0)
    # uniform widths: every block's conv1 pruned (the tampering below edits layer1.0's)
    result = udfc_hub.compress(timm.create_model("cifar_resnet20"), prune_ratio=0.5, bits=3, layer_ratios="uniform")
    return udfc_hub.save_pretrained(result, tmp_path_factory.mktemp("v2") / "m")


@pytest.mark.parametrize("name", sorted(TAMPER_V2))
def test_format_2_shapes_are_checked_by_every_timm_loader(tmp_path, saved_v2, name):
    folder = _tampered(tmp_path, name, saved_v2, TAMPER_V2)
    with pytest.raises(ArtifactError, match=TAMPER_V2[name][1]):
        udfc_hub.check_artifact(folder)
    with pytest.raises(UdfcError, match=TAMPER_V2[name][1]):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def _tampered(tmp_path, name, source=TIMM_V1, table=TAMPER):
    """A copy of ``source`` in ``tmp_path`` with ``table[name]``'s edit applied."""
    folder = tmp_path / "m"
    shutil.copytree(source, folder)
    table[name][0](folder)
    return folder


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_check_artifact_refuses(tmp_path, name):
    folder = _tampered(tmp_path, name)
    with pytest.raises(ArtifactError, match=TAMPER[name][1]):
        udfc_hub.check_artifact(folder)


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_the_timm_loader_refuses(tmp_path, name):
    folder = _tampered(tmp_path, name)
    with pytest.raises(UdfcError, match=TAMPER[name][1]):
        udfc_hub.load_model(f"local-dir:{folder}")


# activation grids of a W8A8 artifact (format 4: input and output quantizers): a step in [MIN_STEP, 1e4], a zero
# point on its grid. Each edit records the tampered file's digest, so that the bounds alone must refuse it.
TAMPER_ACT = {
    "zero input step": (lambda f: _set_tensor(f, "conv1.input_scale", _first(0.0)), r"conv1.input_scale is \[0.0\]"),
    "negative input step": (
        lambda f: _set_tensor(f, "layer1.0.conv1.input_scale", lambda t: -t),
        r"layer1.0.conv1.input_scale is \[-[0-9.e-]+\]; an activation step is one number in",
    ),
    "subnormal input step": (
        lambda f: _set_tensor(f, "conv1.input_scale", _first(1e-40)),
        "conv1.input_scale is .*an activation step",
    ),
    "huge output step": (
        lambda f: _set_tensor(f, "layer1.0.bn2.output_scale", _first(1e30)),
        "layer1.0.bn2.output_scale is .*an activation step",
    ),
    "input zero point off its grid": (
        lambda f: _set_tensor(f, "conv1.input_zero_point", _first(300)),
        r"conv1.input_zero_point is \[300\]; on a 8-bit grid it is an integer in 0..255",
    ),
    "negative output zero point": (
        lambda f: _set_tensor(f, "layer1.0.bn2.output_zero_point", _first(-1)),
        "layer1.0.bn2.output_zero_point is \\[-1\\]",
    ),
}


@pytest.fixture(scope="module")
def saved_w8a8(tmp_path_factory):
    torch.manual_seed(0)
    result = udfc_hub.compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0.5, bits=8, act_bits=8)
    return udfc_hub.save_pretrained(result, tmp_path_factory.mktemp("w8a8") / "m")


@pytest.mark.parametrize("name", sorted(TAMPER_ACT))
def test_activation_grids_are_bounded_for_every_loader(tmp_path, saved_w8a8, name):
    from transformers import AutoModelForImageClassification

    folder = _tampered(tmp_path, name, saved_w8a8, TAMPER_ACT)
    udfc_hub.hub.validate.validate_folder(folder)  # the file itself is well formed, its digest matches
    with pytest.raises(ArtifactError, match=TAMPER_ACT[name][1]):
        udfc_hub.check_artifact(folder)
    with pytest.raises(UdfcError, match=TAMPER_ACT[name][1]):
        udfc_hub.load_model(f"local-dir:{folder}")
    with pytest.raises(UdfcError, match=TAMPER_ACT[name][1]):
        AutoModelForImageClassification.from_pretrained(folder)


def _flip_bits(folder, count=8, seed=0):
    raw = bytearray((folder / "model.safetensors").read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    gen = torch.Generator().manual_seed(seed)
    for at in torch.randint(8 + n, len(raw), (count,), generator=gen).tolist():  # in the tensors, not the header
        raw[at] ^= 1 << int(torch.randint(0, 8, (1,), generator=gen))
    (folder / "model.safetensors").write_bytes(bytes(raw))


def test_a_saved_folder_records_its_weights_digest_and_every_loader_checks_it(tmp_path, r20_result):
    from transformers import AutoModelForImageClassification

    folder = udfc_hub.save_pretrained(r20_result, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["udfc"]["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    _flip_bits(folder)
    match = "does not match the SHA-256 that config.json records"
    with pytest.raises(ArtifactError, match=match):
        udfc_hub.check_artifact(folder)
    with pytest.raises(ArtifactError, match=match):
        udfc_hub.load_model(f"local-dir:{folder}")
    with pytest.raises(ArtifactError, match=match):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    with pytest.raises(UdfcError, match=match):
        AutoModelForImageClassification.from_pretrained(folder)
    for command in (["inspect", folder], ["export", folder, "--onnx", tmp_path / "m.onnx"]):
        out = run_in_process(*command)
        assert out.returncode == 1 and "does not match the SHA-256" in out.stderr, out.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_malformed_digest_is_refused(tmp_path, r20_result):
    folder = udfc_hub.save_pretrained(r20_result, tmp_path / "m")
    _edit_config(folder, lambda c: c["udfc"].update(weights_sha256="not a digest"))
    with pytest.raises(ArtifactError, match="weights_sha256 must be 64 lowercase hex digits"):
        udfc_hub.check_artifact(folder)


def test_a_transformers_twin_checks_its_digest(tmp_path):
    from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    folder = udfc_hub.save_pretrained(udfc_hub.compress(model, prune_ratio=0.3, bits=4), tmp_path / "hf")
    assert len(json.loads((folder / "config.json").read_text())["udfc"]["weights_sha256"]) == 64
    _flip_bits(folder)
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        AutoModelForImageClassification.from_pretrained(folder)
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        udfc_hub.check_artifact(folder)


def test_transformers_refuses_a_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageClassification

    folder = tmp_path / "m"
    shutil.copytree(HF_V1, folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop(next(k for k in state if k.endswith("weight_scale")))
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="missing"):
        AutoModelForImageClassification.from_pretrained(folder)


# transformers reads these itself before any udfc_hub code runs, and refuses them with its own error; a huge
# num_classes is parsed by transformers' config class (one label name per class) before that: see docs/security.md
TRANSFORMERS_OWN = {
    "config a list": ValueError,
    "config not JSON": OSError,
    "no weights": OSError,
    "header lies": SafetensorError,
    "truncated weights": SafetensorError,
}


@pytest.mark.parametrize("name", sorted(set(TAMPER) - {"huge num_classes"}))
def test_transformers_refuses_a_tampered_timm_layout_artifact(tmp_path, name):
    from transformers import AutoModelForImageClassification

    folder = _tampered(tmp_path, name)
    error, match = (TRANSFORMERS_OWN[name], None) if name in TRANSFORMERS_OWN else (UdfcError, TAMPER[name][1])
    with pytest.raises(error, match=match):
        AutoModelForImageClassification.from_pretrained(folder)


@pytest.mark.parametrize("suffix", ["conv1.weight_packed", "bn1.running_var", "linear.bias"])
@pytest.mark.parametrize("folder_found", [True, False])
def test_transformers_refuses_a_timm_layout_artifact_missing_a_tensor(tmp_path, monkeypatch, suffix, folder_found):
    # transformers' TimmWrapper fills the tensors itself and only reports what the file lacks: the folder is checked
    # first, and where it cannot be found (folder_found=False), the model checks what was filled after loading
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageClassification

    from udfc_hub.hub import timm_models

    folder = tmp_path / "m"
    shutil.copytree(TIMM_V1, folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in state if k.endswith(suffix))
    state.pop(dropped)
    save_file(state, str(folder / "model.safetensors"), metadata=metadata)
    if not folder_found:
        monkeypatch.setattr(timm_models, "_transformers_checkpoint_folder", lambda: None)
    match = f"missing \\['{dropped}'\\]" if folder_found else f"lacks 1 tensor.*{dropped}"
    with pytest.raises(ArtifactError, match=match):
        AutoModelForImageClassification.from_pretrained(folder)
    loaded = AutoModelForImageClassification.from_pretrained(TIMM_V1)  # the intact folder still loads
    assert "init_non_persistent_buffers" not in loaded.timm_model.__dict__


def test_transformers_loads_complete_and_resavable(tmp_path):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(HF_V1)
    assert not any(p.is_meta for p in model.parameters())
    again = udfc_hub.save_pretrained(model, tmp_path / HF_V1.name)
    assert (again / "model.safetensors").read_bytes() == (HF_V1 / "model.safetensors").read_bytes()
    # transformers stamps the version that writes the file; everything else is the same, byte for byte
    old, new = ((folder / "config.json").read_text() for folder in (HF_V1, again))
    stamp = re.compile(r'"transformers_version": "[^"]*"')
    assert stamp.sub("", new) == stamp.sub("", old)
    assert json.loads(new)["transformers_version"] == transformers.__version__


# --- evaluation -------------------------------------------------------------------------------------------------


def test_labels_may_not_name_files_outside_the_folder(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.tsv").write_text("file\tclass_index\n../secret.png\t0\n")
    with pytest.raises(InvalidArgumentError, match="lies outside"):
        udfc_hub.evaluation.load_eval_data(data)


def test_nan_logits_are_an_error_not_an_accuracy(tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    model = timm.create_model("cifar_resnet20").eval()
    with torch.no_grad():
        model.linear.bias.fill_(float("nan"))
    with pytest.raises(UdfcError, match="NaN or infinite logits"):
        udfc_hub.evaluate(model, tmp_path / "d.npz")


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("x.txt", "not an .npz"), ("bad.npz", "lacks")])
def test_bad_evaluation_data(tmp_path, content, match):
    import numpy as np

    path = tmp_path / (content or "missing")
    if content == "x.txt":
        path.write_text("x")
    elif content == "bad.npz":
        np.savez(path, a=np.zeros(2))
    with pytest.raises(InvalidArgumentError, match=match):
        udfc_hub.evaluate(timm.create_model("cifar_resnet20"), path)


# --- more inputs: input_size, a symlinked folder, a card-less push, a twin's garbled weights -----------------------


@pytest.mark.parametrize(
    "size,message",
    [
        ((1, 32, 32), r"input_size \(1, 32, 32\) does not fit this model .*expected input.*3 channels"),
        ((3, 0, 32), r"input_size must be \(channels, height, width\) as positive integers"),
        ("3x32x32", "input_size must be"),
        ((3, 32.0, 32), "input_size must be"),
        ((3, 32, 32, 1), "input_size must be"),
    ],
)
def test_input_size_is_checked(r20, size, message):
    with pytest.raises(InvalidArgumentError, match=message):
        udfc_hub.compress(r20, prune_ratio=0.3, bits=4, input_size=size)


def test_saving_onto_a_symlink_to_a_folder_writes_the_folder(r20_result, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    udfc_hub.save_pretrained(r20_result, tmp_path / "link")  # was: a raw NotADirectoryError
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    udfc_hub.save_pretrained(r20_result, tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and udfc_hub.check_artifact(tmp_path / "link")


def test_pushing_a_folder_without_its_card_is_refused(hub, r20_result, tmp_path):
    folder = udfc_hub.save_pretrained(r20_result, tmp_path / "m")
    (folder / "README.md").unlink()
    with pytest.raises(InvalidArgumentError, match="has no README.md .*nothing was pushed"):
        udfc_hub.push(folder, "me/no-card")
    assert "me/no-card" not in hub.repos


def test_a_twin_with_a_garbled_weights_file_is_an_artifact_error(tmp_path, monkeypatch):
    from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification

    from udfc_hub.hub import transformers_models

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    folder = udfc_hub.save_pretrained(udfc_hub.compress(model, prune_ratio=0.3, bits=4), tmp_path / "hf")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    monkeypatch.setattr(transformers_models, "_artifact_folder", lambda *a: None)  # as when the Hub was unreachable
    with pytest.raises(ArtifactError, match="model.safetensors is truncated or corrupt"):
        AutoModelForImageClassification.from_pretrained(folder)


# --- the tracer -------------------------------------------------------------------------------------------------


class _TwoOutputs(nn.Module):
    """Logits and a feature map that the caller also reads: the feature map's channels must stay whole."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        f = torch.relu(self.b1(self.c1(x)))
        logits = self.fc(torch.relu(self.b2(self.c2(f))).mean((2, 3)))
        return {"logits": logits, "features": f} if self.as_dict else (logits, f)


@pytest.mark.parametrize("as_dict", [True, False])
def test_a_returned_feature_map_keeps_its_channels_in_a_dict_as_in_a_tuple(as_dict):
    # a dict's values were not looked into: its feature map lost half its channels, with no note
    model = _TwoOutputs(as_dict).eval()
    result = udfc_hub.compress(model, prune_ratio=0.5, bits=None, input_size=(3, 32, 32))
    out = result.model(torch.randn(1, 3, 32, 32))
    assert (out["features"] if as_dict else out[1]).shape[1] == 16
    assert [g.producer.name for g in result.spec.groups] == ["c2"]
    assert any("model output" in n for n in result.report.notes), result.report.notes


class _Branchy(nn.Module):
    """Branches on its data: ``ca`` runs only when the features' mean is large, which a random input never gives."""

    def __init__(self, check_only: bool = False):
        super().__init__()
        self.check_only = check_only
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.ca, self.cb = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        f = torch.relu(self.b1(self.c1(x)))
        if self.check_only:  # reads a value, but every input takes the one path
            assert torch.isfinite(f).all()
            f = self.cb(self.ca(f))
        else:
            f = self.ca(f) if f.mean() > 100 else self.cb(f)
        return self.fc(f.mean((2, 3)))


def test_a_model_that_branches_on_its_data_is_refused():
    # was: compressed from the traced branch alone, then crashed on inputs that take the other one
    with pytest.raises(UnsupportedModelError, match=r"branches on its data \(bool in \(top level\).*ca never ran"):
        udfc_hub.compress(_Branchy().eval(), prune_ratio=0.5, bits=None, input_size=(3, 32, 32))


def test_a_model_that_reads_values_on_one_path_is_traced_with_a_note():
    result = udfc_hub.compress(_Branchy(check_only=True).eval(), prune_ratio=0.5, bits=4, input_size=(3, 32, 32))
    assert [g.producer.name for g in result.spec.groups] == ["ca", "cb"]  # isfinite is no op it knows: c1 whole
    assert any("two random inputs took the same path" in n for n in result.report.notes), result.report.notes


class _FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.w = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(F.conv2d(torch.relu(self.b1(self.c1(x))), self.w, padding=1).mean((2, 3)))


def test_a_conv_called_on_a_bare_parameter_is_named_in_the_notes():
    result = udfc_hub.compress(_FunctionalConv().eval(), prune_ratio=0.5, bits=4, input_size=(3, 32, 32))
    assert result.spec.groups == ()  # c1 feeds the functional conv: left whole
    note = next(n for n in result.report.notes if "no Conv2d / Linear module's own" in n)
    assert note.startswith("1 conv / linear call(s) in (top level)") and "neither pruned nor quantized" in note


# --- ONNX export ------------------------------------------------------------------------------------------------

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs the [onnx] extra (onnx, onnxruntime)"
)


@needs_onnx
def test_a_weight_only_export_agrees_with_pytorch_on_real_images(tmp_path):
    # it added 8-bit output quantizers (rounding the PyTorch model never does): 2.7 logits off on ResNet-56
    import onnxruntime as ort

    from helpers import CIFAR_LOSSLESS, CIFAR_WEIGHTS, load_cifar, require

    weights = require(CIFAR_WEIGHTS / "resnet56-4bfd9763.th")
    model = timm.create_model("cifar_resnet56", checkpoint_path=str(weights)).eval()
    folder = udfc_hub.save_pretrained(udfc_hub.compress(model, prune_ratio=0.3, bits=4), tmp_path / "w4")
    out = udfc_hub.export_onnx(folder, tmp_path / "w4.onnx")
    assert out.output_quantizers == 0 and out.quantized_inputs == 0
    x, _ = load_cifar(CIFAR_LOSSLESS)
    session = ort.InferenceSession(str(tmp_path / "w4.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
    with torch.no_grad():
        want = udfc_hub.load_model(f"local-dir:{folder}")(x)
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    assert torch.equal(got.argmax(1), want.argmax(1))


@needs_onnx
def test_an_export_beyond_its_tolerance_is_refused_and_writes_nothing(tmp_path, r20_result):
    w8a8 = udfc_hub.compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0, bits=8, act_bits=8)
    with pytest.raises(UdfcError, match=r"differ from the PyTorch model's by .* above the tolerance 1e-09"):
        udfc_hub.export_onnx(w8a8, tmp_path / "m.onnx", tolerance=1e-9)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgumentError, match="tolerance must be a finite logit difference"):
        udfc_hub.export_onnx(w8a8, tmp_path / "m.onnx", tolerance=float("nan"))
    folder = udfc_hub.save_pretrained(r20_result, tmp_path / "w3")
    out = run_in_process("export", folder, "--onnx", tmp_path / "w3.onnx", "--tolerance", "0")
    assert out.returncode == 1 and "above the tolerance 0" in out.stderr and not (tmp_path / "w3.onnx").exists()
    assert udfc_hub.export_onnx(folder, tmp_path / "w3.onnx").max_abs_diff <= 1e-3 * 50


# --- sweeps -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r20_source(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r20.pth"
    torch.save(timm.create_model("cifar_resnet20").state_dict(), path)
    return f"cifar_resnet20={path}"


def test_a_sweep_after_a_torn_last_line_loses_no_row_and_resumes(r20_source, tmp_path):
    from udfc_hub.sweeps import read_results, sweep

    first = sweep([r20_source], bits=[3], out=tmp_path, progress=False)
    table = tmp_path / "results.jsonl"
    whole = table.read_text()
    table.write_text(whole + whole[: len(whole) // 2])  # a second row, killed mid-write
    assert len(read_results(tmp_path)) == 1
    sweep([r20_source], bits=[3, 4], out=tmp_path, progress=False)
    rows = read_results(tmp_path)  # was: the new row appended onto the torn line, then "line 2 is not JSON"
    assert sorted(r["cell"] for r in rows) == ["cifar_resnet20-p0-w3-udfc+", "cifar_resnet20-p0-w4-udfc+"]
    assert all(json.loads(line) for line in table.read_text().splitlines())
    assert rows[0] == first.rows[0]


@pytest.mark.parametrize(
    "pattern,message",
    [
        ("{prune.__class__.__mro__}", r"uses \{prune.__class__.__mro__\}; it may use only"),
        ("{model[0]}", r"uses \{model\[0\]\}"),
        ("{model!r}", r"uses \{model!r\}"),
        ("{secret}", r"uses \{secret\}"),
        ("{prune:{bits}}", r"uses \{prune\}"),
        ("{model", "is not valid"),
        ("", "must be a non-empty string"),
    ],
)
def test_a_repo_pattern_may_use_only_the_named_fields(r20_source, pattern, message):
    from udfc_hub.sweeps import sweep

    with pytest.raises(InvalidArgumentError, match=message):
        sweep([r20_source], bits=[4], data="unused", out="unused", max_drop=1, push_org="me", repo_pattern=pattern)


def test_a_repo_pattern_with_format_specs_still_works(r20_source):
    from udfc_hub.sweeps import plan, repo_name

    (cell,) = plan([r20_source], [0.3], [4], ["udfc+"], None)
    assert repo_name("{model}-p{prune:03d}-w{bits}", cell, "me") == "me/cifar_resnet20-p030-w4"


def test_a_sweep_in_which_every_cell_failed_exits_1(r20_source, tmp_path, monkeypatch):
    from udfc_hub import engine

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "compress", broken)
    out = run_in_process("sweep", r20_source, "--bits", "3,4", "--out", tmp_path / "o", "--quiet")
    assert out.returncode == 1 and "every cell failed" in out.stderr


def test_a_sweep_table_with_a_non_numeric_drop_is_a_clear_error(r20_source, tmp_path):
    from udfc_hub.sweeps import read_results, select, sweep

    sweep([r20_source], bits=[3], out=tmp_path, progress=False)
    row = json.loads((tmp_path / "results.jsonl").read_text())
    (tmp_path / "results.jsonl").write_text(json.dumps(row | {"drop": "1.5"}) + "\n")
    with pytest.raises(UdfcError, match="line 1: 'drop' is '1.5', not a number; the table was edited"):
        select(read_results(tmp_path), 1.0)


def test_a_sweep_table_that_is_a_folder_or_an_unwritable_out_is_refused_before_work(r20_source, tmp_path):
    from udfc_hub.sweeps import read_results, sweep

    (tmp_path / "a" / "results.jsonl").mkdir(parents=True)
    with pytest.raises(InvalidArgumentError, match="results.jsonl is not a file"):
        sweep([r20_source], bits=[3], out=tmp_path / "a", progress=False)
    with pytest.raises(InvalidArgumentError, match="results.jsonl is not a file"):
        read_results(tmp_path / "a")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a path under a file is the unwritable case then
        locked = tmp_path / "file"
        locked.write_text("x")
    with pytest.raises(InvalidArgumentError, match="cannot write the sweep's results|not a folder"):
        sweep([r20_source], bits=[3], out=locked / "o", progress=False)
    out = run_in_process("sweep", r20_source, "--bits", "3", "--out", "/proc/udfc-sweep")
    assert out.returncode == 2 and "not a writable folder" in out.stderr


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_export_onto_a_folder_and_inspect_of_a_file_say_what_is_wrong(r20_result, tmp_path):
    folder = udfc_hub.save_pretrained(r20_result, tmp_path / "m")
    (tmp_path / "out").mkdir()
    out = run_in_process("export", folder, "--onnx", tmp_path / "out")  # was: "exists; pass --overwrite"
    assert out.returncode == 2 and "is a folder; give the ONNX file to write" in out.stderr
    out = run_in_process("inspect", folder / "config.json")
    assert out.returncode == 2 and "has no config.json (not a folder written by udfc-hub)" in out.stderr


_LATE_CTRL_C = """
import os, signal, sys, threading, time
import udfc_hub_cli
udfc_hub_cli.DEFER_REGISTRATION = True
import udfc_hub.cli
udfc_hub.cli.main = lambda argv=None: 3  # a command that has finished, with exit code 3
def late():  # Ctrl-C once the command is over, while the interpreter waits for this thread
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
threading.Thread(target=late).start()
udfc_hub_cli.main()
"""


def test_a_ctrl_c_after_the_command_finished_keeps_its_exit_code():
    proc = subprocess.run([sys.executable, "-c", _LATE_CTRL_C], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "KeyboardInterrupt" not in proc.stderr, (proc.returncode, proc.stderr)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["compress", "resnet18", "--bits", "9", "--out", "{tmp}/o", "--json"], 2, "outside 2..8"),
        (["compress", "resnet18", "--act-bits", "1", "--out", "{tmp}/o", "--json"], 2, "outside 2..8"),
        (
            ["compress", "resnet18", "--bits", "none", "--act-bits", "8", "--out", "{tmp}/o", "--json"],
            2,
            "needs weight bits too",
        ),  # fmt: skip
        (["export", "{tmp}/nonexistent/dir", "--onnx", "{tmp}/m.onnx", "--json"], 2, "not a saved folder"),
        (["compress", "resnet18", "--out", "{tmp}/o", "--push", "bad repo", "--json"], 2, "not a valid Hub repo id"),
        (["eval", "{tmp}/nonexistent/dir", "--data", "x", "--json"], 2, "does not exist"),
        (["inspect", "{tmp}/nonexistent/dir", "--json"], 2, "does not exist"),
        # refused before any work (they failed only when the finished model was saved)
        (["compress", "cifar_resnet20", "--bits", "4", "--out", "/proc/udfc-o", "--json"], 2, "refuses new folders"),
        (["compress", "cifar_resnet20", "--bits", "4", "--out", "", "--overwrite", "--json"], 2, "an empty string"),
    ],
)
def test_cli_errors_are_json_with_json(tmp_path, args, code, message, monkeypatch):
    from huggingface_hub import constants

    for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HF_HUB_CACHE"):  # an empty Hugging Face home
        monkeypatch.setattr(constants, name, str(tmp_path / "hf" / name.lower()))
    start = time.perf_counter()
    proc = run_in_process(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["exit_code"] == code and message in summary["error"]
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - start < 120


# --- small things a new user meets ------------------------------------------------------------------------------


def test_a_misspelt_name_gets_a_did_you_mean_and_a_folder_is_not_called_a_model(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown timm model 'resnte18'. Did you mean one of: resnet18"):
        udfc_hub.load_model("resnte18")
    with pytest.raises(InvalidArgumentError, match="is a folder without config.json: not a udfc_hub model folder"):
        udfc_hub.load_model(str(tmp_path))


def test_a_checkpoint_of_another_model_is_summarised_not_listed(tmp_path):
    torch.save(timm.create_model("cifar_resnet20").state_dict(), tmp_path / "r20.pth")
    with pytest.raises(InvalidArgumentError, match=r"its tensors do not fit this architecture \(\d+ missing") as e:
        udfc_hub.load_model("cifar_resnet32", checkpoint=tmp_path / "r20.pth")
    assert len(str(e.value)) < 400  # torch's message lists every key


def test_the_report_shows_no_residual_for_layers_that_kept_every_channel(r20):
    result = udfc_hub.compress(r20, prune_ratio=0.1, bits=None)  # the moment allocation prunes layer3 only
    layers = {r.name: r for r in result.report.layers}
    assert (layers["layer1.0.conv1"].kept_channels, layers["layer1.0.conv1"].residual) == (16, None)  # was 0.000
    assert result.report.pruned_layers and all(r.residual is not None for r in result.report.pruned_layers)


def test_dir_lists_the_public_names_only():
    names = dir(udfc_hub)
    assert {"compress", "save_pretrained", "CompressionConfig"} <= set(names)
    assert not {"Any", "annotations", "importlib", "sys"} & set(names)


def test_a_bad_cache_size_falls_back_to_the_default(monkeypatch):
    from udfc_hub import cache

    for value in ("lots", "1e9", ""):
        monkeypatch.setenv("UDFC_HUB_CACHE_SIZE", value)
        assert cache.cache_info()["limit_bytes"] == cache.DEFAULT_SIZE
    monkeypatch.setenv("UDFC_HUB_CACHE_SIZE", "-5")
    assert cache.cache_info()["limit_bytes"] == 0
