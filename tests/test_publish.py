"""Publishing against the Hub-compatible server of tests/hub_server.py on 127.0.0.1 (nothing leaves the machine)."""

import socket

import pytest
import timm
import torch
import yaml
from huggingface_hub import constants
from transformers import AutoModelForImageClassification

import udfc_hub
from udfc_hub import InvalidArgumentError, PublishError


@pytest.fixture(scope="module")
def cifar20():
    return timm.create_model("cifar_resnet20").eval()


@pytest.fixture(scope="module")
def saved(cifar20, tmp_path_factory):
    result = udfc_hub.compress(cifar20, prune_ratio=0.3, bits=4)
    return result, udfc_hub.save_pretrained(result, tmp_path_factory.mktemp("art") / "c20")


def _logits(model, x):
    with torch.inference_mode():
        out = model.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def test_push_then_load_with_stock_timm_and_transformers(hub, saved):
    result, folder = saved
    url = udfc_hub.push(folder, "me/c20-udfc")
    assert url.startswith(f"{hub.url}/me/c20-udfc/commit/")
    repo = hub.repos["me/c20-udfc"]
    assert sorted(repo.files) == ["README.md", "config.json", "model.safetensors"]
    assert repo.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert "udfc-hub" in repo.commits[-1]["summary"]

    x = torch.randn(3, 3, 32, 32)
    ref = _logits(result.model, x)
    timm_model = timm.create_model("hf-hub:me/c20-udfc", pretrained=True)
    assert (_logits(timm_model, x) - ref).abs().max() <= 1e-5
    hf_model = AutoModelForImageClassification.from_pretrained("me/c20-udfc")
    assert (_logits(hf_model, x) - ref).abs().max() <= 1e-5

    meta = yaml.safe_load(repo.files["README.md"].decode().split("---")[1])
    assert meta["library_name"] == "timm" and "udfc" in meta["tags"]
    assert "license" not in meta  # no pretrained base was named, so no weights license is claimed


def test_push_replaces_stale_weights(hub, saved):
    _, folder = saved
    udfc_hub.push(folder, "me/c20")
    hub.repos["me/c20"].files["pytorch_model.bin"] = b"old weights"
    hub.repos["me/c20"].files["notes.txt"] = b"user notes"
    udfc_hub.push(folder, "me/c20")
    files = sorted(hub.repos["me/c20"].files)
    assert files == ["README.md", "config.json", "model.safetensors", "notes.txt"]


def test_push_create_pr_returns_pr_url(hub, saved):
    _, folder = saved
    udfc_hub.push(folder, "me/c20")
    url = udfc_hub.push(folder, "me/c20", create_pr=True, commit_message="compressed again")
    assert url.endswith("/me/c20/discussions/1")


def test_compress_and_push_end_to_end(hub, cifar20, tmp_path):
    local = tmp_path / "local"
    url = udfc_hub.compress_and_push(cifar20, "me/c20-p30-w6", prune_ratio=0.3, bits=6, local_dir=local)
    assert "/me/c20-p30-w6/commit/" in url
    assert (local / "model.safetensors").read_bytes() == hub.repos["me/c20-p30-w6"].files["model.safetensors"]


@pytest.mark.parametrize("status,match", [(401, "rejected the token"), (500, "failed with 500")])
def test_http_errors_are_clear_and_keep_the_artifact(hub, saved, status, match):
    _, folder = saved
    hub.fail_next = [status] * 20  # the client retries server errors a few times
    with pytest.raises(PublishError, match=match) as err:
        udfc_hub.push(folder, "me/broken")
    assert err.value.local_path == folder and str(folder) in str(err.value)
    assert (folder / "model.safetensors").is_file()


def test_connection_refused_is_clear(hub, saved, monkeypatch):
    _, folder = saved
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(PublishError, match="could not reach the Hub") as err:
        udfc_hub.push(folder, "me/nowhere")
    assert (err.value.local_path / "config.json").is_file()


def test_compress_and_push_failure_keeps_local_folder(hub, cifar20, tmp_path):
    hub.fail_next = [401] * 5
    local = tmp_path / "kept"
    with pytest.raises(PublishError, match=str(local)):
        udfc_hub.compress_and_push(cifar20, "me/x", prune_ratio=0.3, bits=6, local_dir=local)
    assert sorted(p.name for p in local.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # a retry uploads the same bytes
    hub.fail_next = []
    udfc_hub.push(local, "me/x")
    assert hub.repos["me/x"].files["model.safetensors"] == (local / "model.safetensors").read_bytes()


def test_no_token_fails_before_compressing(hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    called = []
    monkeypatch.setattr(udfc_hub.engine, "compress", lambda *a, **k: called.append(1))
    with pytest.raises(PublishError, match="No Hugging Face token.*HF_TOKEN"):
        udfc_hub.compress_and_push("cifar_resnet20", "me/x")
    assert called == [] and hub.requests == []


@pytest.mark.parametrize("repo_id", ["no-namespace", "me/bad name", ""])
def test_bad_repo_id(hub, saved, repo_id):
    with pytest.raises(InvalidArgumentError, match="repo_id"):
        udfc_hub.push(saved[1], repo_id)


def test_unknown_model_name_is_clear():
    with pytest.raises(InvalidArgumentError, match="unknown timm model 'resnet9999'"):
        udfc_hub.load_model("resnet9999")


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_the_pushed_cards_snippet_runs_as_pasted(hub, saved, tmp_path, kind):
    # the folder was saved without a repo id: the card named "<namespace>/c20", and its snippet left `image` undefined
    import json
    import os
    import re
    import subprocess
    import sys

    if kind == "timm":
        folder, repo = saved[1], "me/pasted-timm"
    else:
        from transformers import ResNetConfig, ResNetForImageClassification

        model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
        folder = udfc_hub.save_pretrained(udfc_hub.compress(model.eval(), prune_ratio=0.3, bits=4), tmp_path / "hf")
        repo = "me/pasted-hf"
    udfc_hub.push(folder, repo)
    card = hub.repos[repo].files["README.md"].decode()
    assert "<namespace>" not in card and "<namespace>" in (folder / "README.md").read_text()  # the local card is kept
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    top5 = json.loads(out.stdout.strip().splitlines()[-1].replace("(", "[").replace(")", "]").replace("'", '"'))
    assert len(top5) == (5 if kind == "timm" else 2) and all(0 <= p <= 1 for _, p in top5)  # 10 / 2 classes
