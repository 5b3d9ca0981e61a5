from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from hpsearch.config import load_study, parse_set
from hpsearch.search.objective import trial_source
from hpsearch.space import (
    FAMILIES,
    Choice,
    Fixed,
    FloatRange,
    PerOptimizer,
    Plain,
    Recorder,
    Scalar,
    baseline_params,
    baseline_value,
    contains,
    near_baseline_params,
    sample_values,
    seed_spec,
    split_block_name,
    to_trial_spec,
)
from hpsearch.storage.study import make_sampler, open_study
from hpsearch.storage.urls import open_storage


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_every_named_parameter_within_its_range(sampler: str) -> None:
    cfg = load_study("catdog", [parse_set(f"search.sampler={sampler}")])
    # the sampler the study file names, as hpsearch builds it; trials are told a value so that
    # TPE leaves its random start-up phase and samples from its model for most of them
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg, 0))
    assert type(study.sampler).__name__.lower().startswith(sampler)
    seen_blocks: set[int] = set()
    for k in range(40):
        trial = study.ask()
        values = sample_values(cfg.search, trial_source(trial))
        n = values["n_blocks"]
        seen_blocks.add(n)
        expected = {"n_blocks"} | {f for f in FAMILIES if not FAMILIES[f].per_block}
        expected |= {f"{f}_b{i}" for f in ("channels", "kernel_size") for i in range(1, n + 1)}
        expected -= {"momentum"}  # fixed in catdog.yaml
        if trial.params["lr_schedule"] == "cosine":
            expected -= {"lr_decay_step", "lr_decay_gamma"}  # StepLR's: not drawn for cosine
        assert set(trial.params) == expected
        for name, value in trial.params.items():
            block = split_block_name(name)
            spec_ = cfg.search.space[block[0] if block else name]
            assert contains(spec_, value, str(trial.params["optimizer"])), name
        spec = to_trial_spec(values, cfg, seed=7)
        assert spec.arch.n_blocks == n == len(spec.arch.kernel_sizes)
        assert spec.optim.momentum == 0.9
        study.tell(trial, (k * 37 % 40) / 40)  # varied values: TPE's model has a ranking
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
    assert params["lr_schedule"] == "step" and params["crop_min"] == 0.35
    spec = to_trial_spec(sample_values(cfg.search, Recorder(baseline_value)), cfg, 0)
    assert spec.arch.channels == (32, 64, 128) and not spec.arch.batch_norm
    # the one source that benchmarks and the GPU probe take it from
    assert seed_spec(cfg.train.epochs, 0, cfg.train.crop_scale, cfg.train.flip) == spec


def test_a_cosine_trial_draws_no_steplr_parameters() -> None:
    cfg = load_study("catdog")
    for schedule in ("step", "cosine"):
        asked: list[str] = []

        def source(
            name: str, spec: Plain, schedule: str = schedule, asked: list[str] = asked
        ) -> Scalar:
            asked.append(name)
            if name == "lr_schedule":
                return schedule
            return spec.choices[0] if isinstance(spec, Choice) else baseline_value(name)

        spec = to_trial_spec(sample_values(cfg.search, source), cfg, 0)
        assert spec.optim.lr_schedule == schedule
        steplr = {"lr_decay_step", "lr_decay_gamma"}
        assert (steplr <= set(asked)) == (schedule == "step"), asked


def test_crop_min_comes_from_the_space_or_else_the_train_section() -> None:
    old = load_study("bench/catdog_v0.yaml")  # a space without crop_min: train.crop_scale
    assert "crop_min" not in old.search.space
    values = sample_values(old.search, Recorder(baseline_value))
    assert to_trial_spec(values, old, 0).crop_scale == old.train.crop_scale
    cfg = load_study("catdog", [parse_set("train.crop_scale=[0.5, 0.9]")])
    for drawn, expected in ((0.35, (0.35, 0.9)), (0.6, (0.6, 0.9)), (1.0, (1.0, 1.0))):

        def source(name: str, spec: Plain, drawn: float = drawn) -> Scalar:
            return drawn if name == "crop_min" else baseline_value(name)

        values = sample_values(cfg.search, source)
        assert to_trial_spec(values, cfg, 0).crop_scale == expected  # 1.0: flips only


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


def test_per_optimizer_lr_is_drawn_from_the_optimizers_range() -> None:
    cfg = load_study("catdog")
    lr_spec = cfg.search.space["lr"]
    assert isinstance(lr_spec, PerOptimizer)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    seen: dict[str, list[float]] = {}
    for _ in range(60):
        trial = study.ask()
        values = sample_values(cfg.search, trial_source(trial))
        seen.setdefault(values["optimizer"], []).append(values["lr"])
        case = lr_spec.spec_for(values["optimizer"])
        assert isinstance(case, FloatRange)
        assert case.low <= values["lr"] <= case.high
    assert set(seen) == {"sgd", "adam", "adamw", "rmsprop"}
    # the ranges differ, so the draws do: SGD's rates sit well above RMSprop's
    assert min(seen["sgd"]) > max(seen["rmsprop"])


def test_near_baseline_keeps_whole_units() -> None:
    cfg = load_study("catdog")
    base = baseline_params(cfg.search)
    rng = random.Random(0)
    sizes = []
    for _ in range(50):
        kept = near_baseline_params(cfg.search, rng)
        assert all(base[k] == v for k, v in kept.items())  # only the baseline's own values
        # units are kept whole: the optimizer with its rates, every block of a family
        assert ("optimizer" in kept) == ("lr" in kept) == ("weight_decay" in kept)
        assert ("lr_decay_step" in kept) == ("lr_decay_gamma" in kept)
        assert len({k for k in kept if k.startswith("channels_b")}) in (0, 3)
        sizes.append(len(kept))
    # about half of it on average; never the baseline again, never a plain random draw
    assert 0 < min(sizes) < max(sizes) < len(base)
    assert 0.3 * len(base) < sum(sizes) / len(sizes) < 0.7 * len(base)


def test_new_study_enqueues_baseline_then_near_baseline(tmp_path: Path) -> None:
    cfg = load_study("catdog", [parse_set("search.near_baseline=4")])
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = open_study(cfg, storage, "catdog")
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 + cfg.search.near_baseline
    assert waiting[0].user_attrs == {"baseline": True}
    fixed = [t.system_attrs["fixed_params"] for t in waiting]  # what enqueue_trial stored
    base = baseline_params(cfg.search)
    assert fixed[0] == base
    for t, params in zip(waiting[1:], fixed[1:], strict=True):
        assert t.user_attrs == {"near_baseline": True}
        assert 0 < len(params) < len(base) and all(base[k] == v for k, v in params.items())
    # a near-baseline trial asks the sampler for the rest, within the space
    open_study(cfg, storage, "catdog")  # resuming enqueues nothing more
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == len(waiting)
    study.ask()
    trial = study.ask()
    values = sample_values(cfg.search, trial_source(trial))
    assert {k: trial.params[k] for k in fixed[1]} == fixed[1]
    assert values["n_blocks"] == len(values["channels"])


def test_a_changed_grid_is_judged_on_its_own_points() -> None:
    """An exhausted grid study whose grid is then changed has new points to run: the old grid's
    trials do not count as visited (GridSampler's own rule, by the recorded search space)."""
    from hpsearch.storage.study import grid_check

    old = load_study("smoke", [parse_set("search.sampler=grid")])
    study = optuna.create_study(direction="maximize", sampler=make_sampler(old, 0))
    study.optimize(lambda t: sample_values(old.search, trial_source(t))["lr"], n_trials=4)
    assert grid_check(old)(study) == "exhausted"
    new = load_study(
        "smoke", [parse_set("search.sampler=grid"), parse_set("search.grid={lr: [5e-3, 7e-3]}")]
    )
    assert grid_check(new)(study) == "open"
    study.sampler = make_sampler(new, 4)
    study.optimize(lambda t: sample_values(new.search, trial_source(t))["lr"], n_trials=2)
    assert grid_check(new)(study) == "exhausted"
    assert sorted(t.params["lr"] for t in study.trials[4:]) == [5e-3, 7e-3]
