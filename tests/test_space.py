from __future__ import annotations

import optuna
import pytest

from hpsearch.config import load_study, parse_set
from hpsearch.objective import trial_source
from hpsearch.space import (
    FAMILIES,
    Choice,
    Fixed,
    Recorder,
    baseline_params,
    baseline_value,
    contains,
    sample_values,
    split_block_name,
    to_trial_spec,
)


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_every_named_parameter_within_its_range(sampler: str) -> None:
    cfg = load_study("catdog", [parse_set(f"search.sampler={sampler}")])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen_blocks: set[int] = set()
    for _ in range(40):
        trial = study.ask()
        values = sample_values(cfg.search, trial_source(trial))
        n = values["n_blocks"]
        seen_blocks.add(n)
        expected = {"n_blocks"} | {f for f in FAMILIES if not FAMILIES[f].per_block}
        expected |= {f"{f}_b{i}" for f in ("channels", "kernel_size") for i in range(1, n + 1)}
        expected -= {"momentum"}  # fixed in catdog.yaml
        assert set(trial.params) == expected
        for name, value in trial.params.items():
            block = split_block_name(name)
            assert contains(cfg.search.space[block[0] if block else name], value), name
        spec = to_trial_spec(values, cfg, seed=7)
        assert spec.arch.n_blocks == n == len(spec.arch.kernel_sizes)
        assert spec.optim.momentum == 0.9
        study.tell(trial, 0.5)
    assert seen_blocks == {3, 4, 5}


def test_baseline_is_the_seed_cnn() -> None:
    cfg = load_study("catdog")
    params = baseline_params(cfg.search)
    assert params["n_blocks"] == 3
    assert [params[f"channels_b{i}"] for i in (1, 2, 3)] == [32, 64, 128]
    assert [params[f"kernel_size_b{i}"] for i in (1, 2, 3)] == [3, 3, 3]
    assert params["lr"] == 1e-3 and params["weight_decay"] == 1e-4
    assert params["lr_decay_step"] == 10 and params["lr_decay_gamma"] == 0.9
    assert params["batch_size"] == 32 and params["dense_units"] == 512
    assert params["optimizer"] == "adam" and params["activation"] == "relu"
    assert "momentum" not in params  # fixed, so not a searched parameter
    spec = to_trial_spec(sample_values(cfg.search, Recorder(baseline_value)), cfg, 0)
    assert spec.arch.channels == (32, 64, 128) and not spec.arch.batch_norm


def test_grid_mode_asks_only_grid_parameters() -> None:
    cfg = load_study("smoke", [parse_set("search.sampler=grid")])
    rec = Recorder(lambda name: {"lr": 3e-3, "kernel_size": 5}[name])
    values = sample_values(cfg.search, rec)
    assert set(rec.params) == {"lr", "kernel_size"}
    assert values["kernel_size"] == (5, 5, 5)  # one grid axis shared by every block
    assert values["batch_size"] == 32  # not in the grid: the baseline's value


def test_contains() -> None:
    assert contains(Fixed(3), 3) and not contains(Fixed(3), 3.0)
    assert contains(Choice((True, False)), True) and not contains(Choice((1, 2)), True)
