"""Two objectives (search.objectives: [val_accuracy, latency_ms | params]): a Pareto front that
best prints, report plots and the checkpoints keep; no pruning. Real photos, real training, a
real SQLite file, the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from conftest import hpsearch, tiny_arch
from hpsearch.config import load_study, parse_set
from hpsearch.engine.data import load_data
from hpsearch.engine.model import build_model
from hpsearch.errors import ConfigError
from hpsearch.search.objective import make_objective
from hpsearch.storage.checkpoint import CheckpointKeeper
from hpsearch.storage.state import CHECKPOINT_ATTR, KEPT_ATTR

TWO = "search.objectives=[val_accuracy, params]"
TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]


def test_objectives_load_and_bad_ones_are_one_line() -> None:
    cfg = load_study("smoke", [parse_set(TWO), parse_set("search.pruner=none")])
    assert cfg.search.objectives == ("val_accuracy", "params")
    assert cfg.search.directions == ["maximize", "minimize"]
    assert load_study("smoke").search.directions == ["maximize"]
    for items, needle in [
        ([TWO], "median cannot prune a study with two objectives"),
        ([TWO, "search.pruner=none", "search.sampler=cmaes"], "cmaes takes one objective"),
        (["search.objectives=[latency_ms]"], "expected [val_accuracy], or"),
        (["search.objectives=[val_accuracy, params, latency_ms]"], "expected [val_accuracy], or"),
        (["search.objectives=[val_accuracy, flops]"], "unknown objective 'flops'"),
        (["search.objectives=3"], "expected a list of objective names"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)) as e:
            load_study("smoke", [parse_set(i) for i in items])
        assert "\n" not in str(e.value)


def test_the_objective_returns_two_values_and_never_reports(tmp_path: Path) -> None:
    sets = [TWO, "search.pruner=none", "search.enqueue_baseline=false", "train.epochs=2"]
    sets += ["data.max_per_class=40", "data.val_max_per_class=20"]
    cfg = load_study("smoke", [parse_set(s) for s in sets])
    data = load_data(cfg.data, torch.device("cpu"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.optimize(make_objective(cfg, data), n_trials=2)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert t.values[1] == t.user_attrs["n_params"]
        assert t.intermediate_values == {}  # Optuna keeps none with two objectives
        assert t.values[0] == t.user_attrs["val_accuracy_by_epoch"][-1]
        assert len(t.user_attrs["val_accuracy_by_epoch"]) == 2


def test_with_two_objectives_the_front_keeps_its_checkpoints(tmp_path: Path) -> None:
    """(accuracy, parameters): 0.6/200 is beaten on both by 0.8/100 and loses its file; 0.7/50
    is on the front beside 0.8/100 although less accurate."""
    cfg = load_study("smoke", [parse_set(TWO), parse_set("search.pruner=none")])
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'db.sqlite'}", directions=["maximize", "minimize"]
    )
    keeper = CheckpointKeeper(tmp_path / "store", 1, cfg, ("cat", "dog"), 32, {})
    arch = tiny_arch()
    model = build_model(arch, 2, 32)
    for values in ((0.8, 100.0), (0.6, 200.0), (0.7, 50.0)):
        trial = study.ask()
        keeper.offer(trial, model, arch, values)
        keeper.settle(study, study.tell(trial, values))
    files = {p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")}
    kept = [t for t in study.trials if t.number in (0, 2)]
    assert files == {t.user_attrs[CHECKPOINT_ATTR] for t in kept}
    assert study.user_attrs[KEPT_ATTR] == [0, 2]  # most accurate first


@pytest.mark.slow
def test_a_pareto_search_from_the_command_line(tmp_path: Path) -> None:
    two = ["--set", "search.objectives=[val_accuracy, latency_ms]", "--set", "search.pruner=none"]
    args = ["run", "--study", "smoke", "--trials", "5", "--set", "train.epochs=1", *TINY]
    r = hpsearch([*args, *two], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "latency" in r.stdout and "Traceback" not in r.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5
    assert all(t.values[1] == pytest.approx(t.user_attrs["latency_ms"], abs=1e-4) for t in done)

    def beaten(t: optuna.trial.FrozenTrial) -> bool:
        return any(
            o.values[0] >= t.values[0]
            and o.values[1] <= t.values[1]
            and (o.values[0] > t.values[0] or o.values[1] < t.values[1])
            for o in done
        )

    front = sorted((t for t in done if not beaten(t)), key=lambda t: (-t.values[0], t.number))
    best = hpsearch(["best", "--study", "smoke"], tmp_path)
    assert best.returncode == 0, best.stderr
    doc = yaml.safe_load(best.stdout)
    assert [p["trial"] for p in doc["pareto_front"]] == [t.number for t in front]
    assert doc["trial"] == front[0].number  # the most accurate trial of the front
    assert all(p["checkpoint"] for p in doc["pareto_front"])
    status = hpsearch(["status", "--study", "smoke"], tmp_path)
    assert f"pareto front: {len(front)} trial" in status.stdout
    report = hpsearch(["report", "--study", "smoke", "--output", "rep"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "rep" / "pareto_front.png").stat().st_size > 0
    # the fastest model of the front exports like any other
    fastest = min(front, key=lambda t: t.values[1])
    export = ["export", "--study", "smoke", "--format", "torchscript", "--output", "m.pt"]
    r = hpsearch([*export, "--trial", str(fastest.number)], tmp_path)
    assert r.returncode == 0, r.stderr
    # the same study name with a one-objective study file: one line, nothing run
    r = hpsearch(args, tmp_path)
    assert r.returncode != 0 and r.stderr.startswith("hpsearch: error: study 'smoke' exists with")
    assert len(r.stderr.strip().splitlines()) == 1
    assert len(optuna.load_study(study_name="smoke", storage=study._storage).trials) == 5
