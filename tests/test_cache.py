"""The on-disk cache of distilled images: a second distillation of the same model reads them back, the cache is
bounded, survives a torn file and concurrent writers, and can be listed and cleared (API and CLI)."""

import threading

import pytest
import timm
import torch

import udfc_hub
from helpers import run_in_process
from udfc_hub import cache, distill


@pytest.fixture()
def r20():
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet20").eval()


def _distil(model, seed=0):
    distill._CACHE.clear()  # as in a new process: only the disk cache remains
    return distill.distill_images(model, (3, 32, 32), 4, steps=3, seed=seed)


def test_a_second_distillation_reads_the_images_back_from_disk(r20, monkeypatch):
    images, first, last = _distil(r20)
    assert len(udfc_hub.cache_info()["entries"]) == 1

    def no_second_run(*args, **kwargs):
        raise AssertionError("distilled again")

    monkeypatch.setattr(distill, "_invert", no_second_run)
    again, first2, last2 = _distil(r20)
    assert torch.equal(again, images) and (first2, last2) == (first, last)
    with pytest.raises(AssertionError, match="distilled again"):  # other settings: another entry
        _distil(r20, seed=1)


def test_other_weights_are_another_entry(r20):
    _distil(r20)
    with torch.no_grad():
        r20.conv1.weight.mul_(1.01)
    _distil(r20)
    assert len(udfc_hub.cache_info()["entries"]) == 2


def test_the_cache_is_bounded_least_recently_used_first(r20, monkeypatch):
    _distil(r20, seed=0)
    size = udfc_hub.cache_info()["total_bytes"]
    monkeypatch.setenv("UDFC_HUB_CACHE_SIZE", str(size + size // 2))  # room for one entry and a half
    _distil(r20, seed=1)
    info = udfc_hub.cache_info()
    assert len(info["entries"]) == 1 and info["total_bytes"] <= info["limit_bytes"]


def test_a_torn_entry_counts_as_absent_and_is_replaced(r20):
    images, _, _ = _distil(r20)
    (entry,) = (cache.cache_dir() / "distilled").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    again, _, _ = _distil(r20)
    assert torch.equal(again, images) and cache.load_distilled(entry.stem) is not None


def test_concurrent_writers_leave_a_whole_entry():
    images = torch.randn(4, 3, 8, 8)
    threads = [threading.Thread(target=cache.store_distilled, args=("k", images, 1.0, 0.5)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored, first, last = cache.load_distilled("k")
    assert torch.equal(stored, images) and (first, last) == (1.0, 0.5)
    assert [p.name for p in (cache.cache_dir() / "distilled").iterdir()] == ["k.safetensors"]  # no temp files


def test_list_and_clear_from_python_and_the_cli(r20):
    _distil(r20)
    out = run_in_process("cache")
    assert out.returncode == 0 and "1 entry" in out.stdout and str(cache.cache_dir()) in out.stdout
    out = run_in_process("cache", "--clear")
    assert out.returncode == 0 and "removed 1" in out.stdout
    assert udfc_hub.cache_info()["entries"] == [] and udfc_hub.clear_cache() == 0
