"""Sweeps: the grid, the table that survives interruption, the selection and push, and the same rows on Ray."""

import json

import numpy as np
import pytest
import timm
import torch
import yaml

import udfc_hub
from udfc_hub import InvalidArgumentError
from udfc_hub import sweeps as sweep_module
from udfc_hub.cli import main
from udfc_hub.sweeps import KILL_ONCE_ENV, TIMING_FIELDS, plan, read_results, select, sweep

GRID = dict(prune_ratios=[0.0, 0.5], bits=[3, None], methods=["udfc+"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two CIFAR ResNets with random weights, as NAME=CHECKPOINT sources (nothing is downloaded)."""
    root = tmp_path_factory.mktemp("weights")
    out = []
    for seed, arch in enumerate(("cifar_resnet20", "cifar_resnet32")):
        torch.manual_seed(seed)
        path = root / f"{arch}.pth"
        torch.save(timm.create_model(arch).state_dict(), path)
        out.append(f"{arch}={path}")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 48))
    return path


def _metrics(rows):
    """What a cell computed, without how long it took or where it ran."""
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows}


@pytest.fixture(scope="module")
def clean(models, data, tmp_path_factory):
    return sweep(models, **GRID, data=data, out=tmp_path_factory.mktemp("clean"), progress=False)


def test_plan_is_the_grid_model_major_with_every_config_checked(models):
    cells = plan(models, [0.0, 0.3], [4, 6, None], ["udfc+", "nm"], {"granularity": "tensor"})
    # 2 models x (2 ratios x 3 bit widths - the float base itself) x 2 methods
    assert len(cells) == 2 * 5 * 2 and len({c.key for c in cells}) == len(cells)
    assert [c.model.label for c in cells[:10]] == ["cifar_resnet20"] * 10
    assert cells[0].config.granularity == "tensor"
    # a non-default option adds a short hash to the name (artifact folders of two such sweeps never collide)
    assert cells[0].name.startswith("cifar_resnet20-p0-w4-udfc+-") and len(cells[0].name) == 33
    (plain,) = plan(models[:1], [0.3], [4], ["udfc+"], None)
    assert plain.name == "cifar_resnet20-p30-w4-udfc+"
    # so do the options that the saved settings leave out at their default; each its own hash
    names = {
        plan(models[:1], [0.3], [4], ["udfc+"], options)[0].name
        for options in (
            {"bit_widths": "mixed"},
            {"correlations": "filters"},
            {"act_bits": 8},
            {"criterion": "l2"},
            {"rounding": "probe"},
        )
    }
    assert len(names) == 5 and all(n.startswith("cifar_resnet20-p30-w4-udfc+-") for n in names)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prune_ratios=[1.5]), "prune_ratio"),
        (dict(bits=[9]), "bits"),
        (dict(methods=["magic"]), "method"),
        (dict(options={"bogus": 1}), "unknown compression option"),
        (dict(options={"bits": 4}), "the sweep's own lists"),
        (dict(prune_ratios=[]), "must not be empty"),
        (dict(prune_ratios=[0.0], bits=[None]), "nothing to sweep"),
        (dict(engine="spark"), "engine must be one of"),
        (dict(cpus_per_task=0), "cpus_per_task"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_drop=float("nan")), "max_drop"),
        (dict(save=True), "needs an output folder"),
        (dict(push_org="me", out="x"), "give data"),
    ],
)
def test_bad_arguments_fail_before_any_work(models, kwargs, match, monkeypatch):
    monkeypatch.setattr(sweep_module, "prepare_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(InvalidArgumentError, match=match):
        sweep(models, **{"bits": [4], **kwargs}, progress=False)


def test_a_model_named_twice_and_a_missing_checkpoint_are_refused(models, tmp_path):
    with pytest.raises(InvalidArgumentError, match="share a name"):
        plan([models[0], models[0]], [0.0], [4], ["udfc+"], None)
    with pytest.raises(InvalidArgumentError, match="is not a file"):
        plan([f"cifar_resnet20={tmp_path / 'nope.pth'}"], [0.0], [4], ["udfc+"], None)


def test_sequential_sweep_rows_match_single_compress_calls(clean, models, data):
    assert len(clean.rows) == 6 and all(r["status"] == "ok" for r in clean.rows)
    row = next(r for r in clean.rows if r["cell"] == "cifar_resnet32-p50-w3-udfc+")
    base = udfc_hub.load_model(models[1].split("=")[0], checkpoint=models[1].split("=")[1])
    result = udfc_hub.compress(base, prune_ratio=0.5, bits=3)
    scores = udfc_hub.evaluate(result.model, data, reference=base)
    before = udfc_hub.evaluate(base, data)
    assert (row["top1"], row["top5"], row["agreement"]) == (scores["top1"], scores["top5"], scores["agreement"])
    assert row["base_top1"] == before["top1"] and row["drop"] == round(before["top1"] - scores["top1"], 2)
    assert row["params"] == result.report.after.params < row["params_before"]
    assert row["file_bytes"] == udfc_hub.hub.artifact.artifact_size(result)
    assert (clean.table.parent / "results.md").read_text().count("\n") == 2 + 6


def test_the_float_model_runs_once_per_model(models, data, monkeypatch, tmp_path):
    calls = []
    real = sweep_module.prepare_model
    monkeypatch.setattr(sweep_module, "prepare_model", lambda m, *a: calls.append(m.label) or real(m, *a))
    sweep(models, **GRID, data=data, progress=False)
    assert calls == ["cifar_resnet20", "cifar_resnet32"]


def test_an_interrupted_sweep_resumes_where_it_stopped(clean, models, data, tmp_path):
    seen = []

    def stop_after_three(row):
        seen.append(row["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(models, **GRID, data=data, out=tmp_path, progress=False, on_row=stop_after_three)
    assert len(read_results(tmp_path)) == 3
    again = []
    resumed = sweep(models, **GRID, data=data, out=tmp_path, progress=False, on_row=lambda r: again.append(r["key"]))
    assert len(again) == 3 and not set(again) & set(seen)  # only the cells that had not finished
    assert _metrics(resumed.rows) == _metrics(clean.rows)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 6
    nothing = []
    sweep(models, **GRID, data=data, out=tmp_path, progress=False, on_row=nothing.append)
    assert nothing == []


def test_a_torn_last_line_is_the_cell_in_flight(clean, tmp_path):
    table = tmp_path / "results.jsonl"
    lines = clean.table.read_text().splitlines()
    table.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])  # the driver was killed mid-write
    assert len(read_results(tmp_path)) == 4
    table.write_text("not json\n" + "\n".join(lines))
    with pytest.raises(udfc_hub.UdfcError, match="line 1 is not JSON"):
        read_results(tmp_path)


def test_a_failing_cell_records_its_error_and_the_sweep_goes_on(models, data, monkeypatch, tmp_path):
    real = udfc_hub.engine.compress

    def fails_at_half(model, config=None, **kw):
        if config.prune_ratio == 0.5 and config.bits == 3:
            raise RuntimeError("solver blew up")
        return real(model, config, **kw)

    monkeypatch.setattr(udfc_hub.engine, "compress", fails_at_half)
    result = sweep([*models, "no_such_model_xyz"], **GRID, data=data, out=tmp_path, progress=False)
    failed = [r for r in result.rows if r["status"] == "error"]
    assert {r["cell"] for r in failed} == {
        "cifar_resnet20-p50-w3-udfc+",
        "cifar_resnet32-p50-w3-udfc+",
        *(f"no_such_model_xyz-p{p}-w{b}-udfc+" for p, b in ((0, 3), (50, 3), (50, "fp"))),
    }
    assert all("solver blew up" in r["error"] for r in failed if r["model"] != "no_such_model_xyz")
    assert all("no_such_model_xyz" in r["error"] for r in failed if r["model"] == "no_such_model_xyz")
    assert sum(r["status"] == "ok" for r in result.rows) == 4
    monkeypatch.setattr(udfc_hub.engine, "compress", real)
    rerun = []
    sweep(models, **GRID, data=data, out=tmp_path, progress=False, on_row=lambda r: rerun.append(r["cell"]))
    assert sorted(rerun) == ["cifar_resnet20-p50-w3-udfc+", "cifar_resnet32-p50-w3-udfc+"]  # errors run again


def _row(model, size, top1, drop, status="ok"):
    return {"key": f"{model}{size}", "model": model, "file_bytes": size, "top1": top1, "drop": drop, "status": status}


def test_select_takes_the_smallest_within_the_budget():
    rows = [
        _row("a", 100, 90.0, 0.0),
        _row("a", 40, 89.5, 0.5),
        _row("a", 40, 89.7, 0.3),  # same size, better top-1
        _row("a", 10, 80.0, 10.0),
        _row("a", 5, 89.9, 0.1, status="error"),
        _row("b", 50, 70.0, 3.0),
    ]
    chosen = select(rows, max_drop=1.0)
    assert [(r["model"], r["file_bytes"], r["top1"]) for r in chosen] == [("a", 40, 89.7)]
    assert [r["file_bytes"] for r in select(rows, max_drop=10.0)] == [10, 50]
    with pytest.raises(InvalidArgumentError, match="needs evaluated cells"):
        select([_row("a", 1, None, None)], 1.0)


def test_select_push_publishes_only_the_chosen_cells_with_their_accuracy(hub, models, data, tmp_path):
    # a first run that saved nothing: pushing from the same folder later runs the cells again to save them
    sweep(models[:1], **GRID, data=data, out=tmp_path, progress=False)
    result = sweep(models[:1], **GRID, data=data, out=tmp_path, max_drop=100.0, push_org="me", progress=False)
    (chosen,) = result.selected
    assert chosen["file_bytes"] == min(r["file_bytes"] for r in result.rows)
    assert sorted(hub.repos) == [chosen["repo_id"]] == ["me/cifar_resnet20-udfc-p50-w3-udfcplus"]
    card = hub.repos[chosen["repo_id"]].files["README.md"].decode()
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"][0]
    assert index["metrics"][0]["value"] == chosen["top1"]
    loaded = timm.create_model(f"hf-hub:{chosen['repo_id']}", pretrained=True)
    assert sum(p.numel() for p in loaded.parameters()) == chosen["params"]
    assert (tmp_path / "pareto.png").stat().st_size > 0 or "pareto" not in result.files
    assert len(list((tmp_path / "artifacts").iterdir())) == 3  # every cell saved, one pushed


def test_cli_sweep_json(models, data, tmp_path, capsys):
    code = main(
        [
            "sweep",
            *models[:1],
            "--prune",
            "0,0.5",
            "--bits",
            "3",
            "--data",
            str(data),
            "--out",
            str(tmp_path),
            "--select",
            "max_drop=100",
            "--json",
            "--quiet",
        ]  # fmt: skip
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["cells"] == 2 and out["failed"] == 0
    assert out["selected"] == ["cifar_resnet20-p50-w3-udfc+"]
    assert len(read_results(tmp_path)) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prune", "0,2"], "outside [0, 1)"),
        (["--methods", "magic"], "is not a method"),
        (["--select", "drop=1"], "give max_drop=X"),
        (["--push-org", "me"], "give --select"),
        (["--select", "max_drop=1"], "give --data"),
        (["--memory-per-task", "lots"], "is not a size"),
    ],
)
def test_cli_sweep_usage_errors(models, tmp_path, capsys, args, message):
    try:
        code = main(["sweep", *models[:1], "--bits", "4", "--out", str(tmp_path / "o"), *args])
    except SystemExit as e:  # argparse's own checks exit
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- Ray -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "udfc-hub[ray]"')
    marker = tmp_path_factory.mktemp("fault") / "killed-once"
    # every worker gets the fault hook; it fires only while the marker file is absent
    env = {KILL_ONCE_ENV: f"cifar_resnet32:{marker}", "OMP_NUM_THREADS": "1"}
    marker.touch()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_same_rows_and_survives_a_killed_worker(ray_runtime, clean, models, data, tmp_path):
    marker = ray_runtime
    on_ray = sweep(models, **GRID, data=data, out=tmp_path / "a", engine="ray", progress=False)
    assert _metrics(on_ray.rows) == _metrics(clean.rows)
    assert len({r["worker"] for r in on_ray.rows}) >= 1

    marker.unlink()  # the first cifar_resnet32 cell's worker now dies once, mid-sweep
    killed = sweep(models, **GRID, data=data, out=tmp_path / "b", engine="ray", progress=False)
    assert marker.exists()  # the hook fired
    assert _metrics(killed.rows) == _metrics(clean.rows)  # the retry cost nothing else
    assert len(read_results(tmp_path / "b")) == 6


def test_ray_missing_is_a_clear_error(models, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InvalidArgumentError, match=r'pip install "udfc-hub\[ray\]"'):
        sweep(models, bits=[4], engine="ray", progress=False)
