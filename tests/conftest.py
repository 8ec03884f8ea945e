"""pytest configuration: every test starts from the same random seed; ``hub`` is a Hub on 127.0.0.1."""

import pytest
import torch
from huggingface_hub import constants

from hub_server import HubServer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Each test has its own, empty udfc-hub disk cache (nothing is written to the user's Hugging Face home, and no
    test reads another's distilled images)."""
    monkeypatch.setenv("UDFC_HUB_CACHE", str(tmp_path_factory.mktemp("udfc-cache")))


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """huggingface_hub (and so timm and transformers) pointed at tests/hub_server.py, with a fresh cache."""
    with HubServer() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield server
