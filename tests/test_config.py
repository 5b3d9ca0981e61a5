from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.config import load_study, parse_set
from hpsearch.errors import ConfigError
from hpsearch.space import Choice, FloatRange, IntRange, PerOptimizer

SMOKE_YAML = (Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_catdog_and_smoke_load() -> None:
    cat = load_study("catdog")
    assert cat.name == "catdog"
    assert cat.search.enqueue_baseline
    assert cat.search.sampler.name == "tpe"
    lr = cat.search.space["lr"]
    assert isinstance(lr, PerOptimizer)  # one log range per optimizer the space can draw
    assert {o for o, _ in lr.cases} == {"sgd", "adam", "adamw", "rmsprop"}
    assert all(isinstance(c, FloatRange) and c.log for _, c in lr.cases)
    assert lr.spec_for("sgd").low > lr.spec_for("adam").low  # type: ignore[union-attr]
    assert cat.search.space["head"] == Choice(("flatten", "gap"))
    assert cat.search.near_baseline == 0  # measured no better than random start-up trials
    assert isinstance(cat.search.space["n_blocks"], IntRange)
    assert cat.search.space["kernel_size"] == Choice((3, 5, 7))
    smoke = load_study("smoke")
    assert smoke.data.image_size == 32 and smoke.train.epochs == 2


def test_frozen() -> None:
    cfg = load_study("smoke")
    with pytest.raises(AttributeError):
        cfg.train.epochs = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.search.space["lr"] = None  # type: ignore[index]


def test_yaml_reads_1e_minus_3_as_float(tmp_path: Path) -> None:
    p = write(tmp_path, "search:\n  space:\n    lr: {low: 1e-4, high: 1e-2, log: true}\n")
    assert load_study(str(p)).search.space["lr"] == FloatRange(1e-4, 1e-2, True, None)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data:\n  image_sise: 32\n", "data.image_sise: unknown key (did you mean 'image_size'?)"),
        ("trian:\n  epochs: 2\n", "trian: unknown key (did you mean 'train'?)"),
        ("train:\n  epochs: -1\n", "train.epochs: must be >= 1, got -1"),
        ("train:\n  epochs: 0\n", "train.epochs: must be >= 1, got 0"),
        ("train:\n  epochs: two\n", "train.epochs: expected an integer, got str 'two'"),
        ("data:\n  image_size: 32.5\n", "data.image_size: expected an integer"),
        ("search:\n  space:\n    lr: {low: 1e-2, high: 1e-4}\n", "search.space.lr: empty range"),
        ("search:\n  space:\n    lr: {low: 1e-2, high: 1e-2}\n", "search.space.lr: empty range"),
        (
            "search:\n  space:\n    weight_decay: {low: 0, high: 1, log: true}\n",
            "search.space.weight_decay.low: a log range needs low > 0",
        ),
        (
            "search:\n  space:\n    kernel_size: [3, 4]\n",
            "search.space.kernel_size.choices: 4 is not an odd",
        ),
        (
            "search:\n  space:\n    kernel_size: []\n",
            "search.space.kernel_size.choices: expected a non-empty",
        ),
        ("search:\n  space:\n    activation: [relu, swish]\n", "'swish' is not one of"),
        (
            "search:\n  space:\n    dropout: {low: 0.0, high: 1.5}\n",
            "search.space.dropout.high: 1.5 is outside",
        ),
        (
            "search:\n  space:\n    optimiser: [sgd]\n",
            "search.space.optimiser: unknown key (did you mean 'optimizer'?)",
        ),
        ("search:\n  sampler: annealing\n", "search.sampler: unknown sampler 'annealing'"),
        ("search:\n  pruner: {name: patient}\n", "search.pruner: unknown pruner 'patient'"),
        ("search:\n  sampler: grid\n  grid: {}\n", "search.grid: the grid sampler needs values"),
        (
            "search:\n  space:\n    lr: {low: 1e-4, high: 1e-2}\n  grid:\n    lr: [0.5]\n",
            "search.grid.lr: grid value 0.5 is outside search.space.lr",
        ),
        ("search:\n  space:\n    n_blocks: {low: 2, high: 6}\n", "search.space.n_blocks: 6 blocks"),
        (
            "search:\n  enqueue_baseline: true\n  space:\n    lr: {low: 1e-2, high: 1e-1}\n",
            "the seed baseline's lr=0.001 is outside this range",
        ),
        ("- just\n- a list\n", "a study file is a mapping of sections"),
        ("data: [unclosed\n", "not valid YAML"),
        (
            "data:\n  image_size: 32\ntrain:\n  epochs: 2\ndata:\n  image_size: 64\n",
            "line 5 not valid YAML: duplicate key 'data' (first at line 1)",
        ),
        ("data:\n  image_size: 32\n  image_size: 64\n", "duplicate key 'image_size'"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path, "data:\n  image_size: 32\n" + text if text.startswith("search") else text)
    with pytest.raises(ConfigError) as e:
        load_study(str(p))
    msg = str(e.value)
    assert needle in msg
    assert str(p) in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        (
            "data.image_size=banana",
            "--set data.image_size: data.image_size: expected an integer, got str 'banana'",
        ),
        (
            "train.epochz=3",
            "--set train.epochz: train.epochz: unknown key (did you mean 'epochs'?)",
        ),
        ("train.epochs=-2", "--set train.epochs: train.epochs: must be >= 1"),
        (
            "search.space.lr.low=oops",
            "--set search.space.lr.low: search.space.lr.low: expected float",
        ),
    ],
)
def test_set_errors_name_the_flag(item: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_study("smoke", [parse_set(item)])
    assert needle in str(e.value)


def test_set_overrides_and_types() -> None:
    cfg = load_study(
        "catdog",
        [
            parse_set("data.image_size=64"),
            parse_set("train.epochs=1"),
            parse_set("search.space.activation=[relu, gelu]"),
            parse_set("search.sampler=random"),
        ],
    )
    assert cfg.data.image_size == 64 and cfg.train.epochs == 1
    assert cfg.search.space["activation"] == Choice(("relu", "gelu"))
    assert cfg.search.sampler.name == "random" and dict(cfg.search.sampler.options) == {}
    assert cfg.to_dict()["data"]["image_size"] == 64


def test_set_needs_key_value() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set("train.epochs")


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "data:\n  root: from/file\n")
    monkeypatch.delenv("HPSEARCH_DATA")
    assert load_study(str(p)).data.root == (Path.cwd() / "from/file").resolve()
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path / "env"))
    assert load_study(str(p)).data.root == tmp_path / "env"
    cfg = load_study(str(p), [parse_set(f"data.root={tmp_path / 'flag'}")])
    assert cfg.data.root == tmp_path / "flag"
    monkeypatch.delenv("HPSEARCH_DATA")
    empty = write(tmp_path, "{}\n", "e.yaml")
    assert load_study(str(empty)).data.root == (Path.cwd() / "data/catdog").resolve()


def test_unknown_study_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"unknown study 'nope'.*catdog, smoke"):
        load_study("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_study("missing/file.yaml")


def test_smoke_yaml_is_what_the_tests_assume() -> None:
    assert "max_per_class: 300" in SMOKE_YAML


PER_OPT = """
search:
  enqueue_baseline: true
  space:
    optimizer: [sgd, adam]
    lr:
      sgd: {low: 1e-2, high: 1e-1, log: true}
      adam: {low: 1e-4, high: 3e-3, log: true}
"""


def test_per_optimizer_range_loads(tmp_path: Path) -> None:
    cfg = load_study(str(write(tmp_path, PER_OPT)))
    lr = cfg.search.space["lr"]
    assert isinstance(lr, PerOptimizer)
    assert lr.spec_for("sgd") == FloatRange(1e-2, 1e-1, True)
    assert lr.spec_for("adam") == FloatRange(1e-4, 3e-3, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # an optimizer the space can draw has no range
        (
            PER_OPT.replace("optimizer: [sgd, adam]", "optimizer: [sgd, adam, rmsprop]"),
            "search.space.lr: no range for optimizer rmsprop",
        ),
        # a key that is not an optimizer
        (PER_OPT.replace("sgd: {low", "sdg: {low"), "search.space.lr.sdg: not an optimizer"),
        # a per-optimizer case is validated like any range
        (PER_OPT.replace("high: 1e-1, log", "high: 1e-3, log"), "search.space.lr.sgd: empty range"),
        # the seed baseline (adam, lr 1e-3) must lie in adam's range, not just in any range
        (
            PER_OPT.replace("adam: {low: 1e-4, high: 3e-3", "adam: {low: 2e-3, high: 3e-3"),
            "the seed baseline's lr=0.001 is outside this range",
        ),
        # only the optimizer's own families may depend on it
        ("search:\n  space:\n    dropout: {sgd: 0.1, adam: 0.2}\n", "search.space.dropout"),
    ],
)
def test_per_optimizer_range_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_study(str(write(tmp_path, text)))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_near_baseline_must_be_a_count(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search\.near_baseline"):
        load_study(str(write(tmp_path, "search:\n  near_baseline: -1\n")))


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("search.space.kernel_size={low: 3, high: 8}", "high: 8 is not an odd kernel size"),
        ("search.space.kernel_size={low: 4, high: 8}", "low: 4 is not an odd kernel size"),
        ("search.space.kernel_size={low: 3, high: 7, step: 1}", "kernel sizes are odd"),
        ("search.grid={kernel_size_b9: [3, 5]}", "search.grid.kernel_size_b9: block 9 does not"),
        ("search.grid={channels_b0: [8, 16]}", "search.grid.channels_b0: unknown parameter"),
    ],
)
def test_search_space_edges_are_refused(item: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_study("smoke", [parse_set(item)])


def test_a_kernel_range_draws_odd_sizes_only() -> None:
    cfg = load_study("smoke", [parse_set("search.space.kernel_size={low: 3, high: 7}")])
    assert cfg.search.space["kernel_size"] == IntRange(3, 7, False, 2)
    cfg = load_study("smoke", [parse_set("search.grid={kernel_size_b2: [3, 5]}")])
    assert cfg.search.grid == {"kernel_size_b2": (3, 5)}


@pytest.mark.parametrize(
    "option,needle",
    [
        (
            "pruner: {name: hyperband, max_resource: 0}",
            "search.pruner.max_resource: expected a whole number >= 1 or auto, got 0",
        ),
        (
            "pruner: {name: hyperband, min_resource: 5, max_resource: 3}",
            "search.pruner.max_resource: must be at least min_resource (5), got 3",
        ),
        (
            'pruner: {name: percentile, percentile: "40"}',
            "search.pruner.percentile: expected a number from 0 to 100, got '40' (a str)",
        ),
        (
            "pruner: {name: median, n_startup_trials: true}",
            "search.pruner.n_startup_trials: expected a whole number >= 0",
        ),
        (
            "pruner: {name: successive_halving, reduction_factor: 1}",
            "search.pruner.reduction_factor: expected a whole number >= 2",
        ),
        ("pruner: {name: none, patience: 3}", "none takes no option 'patience'"),
        ("sampler: {name: tpe, bogus: 1}", "search.sampler.bogus: tpe takes no option 'bogus'"),
        ("sampler: {name: tpe, multivariate: 'yes'}", "expected true or false, got 'yes'"),
        ("sampler: {name: qmc, qmc_type: lattice}", "expected one of sobol, halton"),
        ("sampler: {name: tpe, prior_weight: 0}", "expected a number above 0, got 0"),
    ],
)
def test_sampler_and_pruner_options_are_checked_on_reading(
    tmp_path: Path, option: str, needle: str
) -> None:
    p = write(tmp_path, f"data:\n  image_size: 32\nsearch:\n  {option}\n")
    with pytest.raises(ConfigError) as e:
        load_study(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_option_table_matches_optunas_constructors() -> None:
    """Every option the study file may give is a keyword of Optuna's class, and an option of
    the table's type and range constructs it (the table cannot drift from Optuna)."""
    import inspect

    import optuna

    from hpsearch.config import OPTIONS

    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    for kind in OPTIONS.values():
        for name, options in kind.items():
            keywords = inspect.signature(classes[name]).parameters
            assert set(options) <= set(keywords), (name, set(options) - set(keywords))


def test_deterministic_and_cuda_graphs_are_train_options_off_by_default() -> None:
    """train.deterministic and train.cuda_graphs: validated like the other train booleans,
    recorded in the resolved config, passed to the trial's spec; a config recorded before they
    existed (a trial's ``config`` attribute, a checkpoint) still loads, with both off."""
    from hpsearch.config import config_from_dict
    from hpsearch.space import Recorder, baseline_value, sample_values, to_trial_spec

    default = load_study("smoke")
    assert not default.train.deterministic and not default.train.cuda_graphs
    on = load_study(
        "smoke", [parse_set("train.deterministic=true"), parse_set("train.cuda_graphs=yes")]
    )
    assert on.train.deterministic and on.train.cuda_graphs
    assert on.to_dict()["train"]["deterministic"] is True
    assert on.to_dict()["train"]["cuda_graphs"] is True
    assert config_from_dict(on.to_dict(), "here").train == on.train
    spec = to_trial_spec(sample_values(on.search, Recorder(baseline_value)), on, 0)
    assert spec.deterministic and spec.cuda_graphs
    old = default.to_dict()
    for key in ("deterministic", "cuda_graphs"):
        del old["train"][key]
    assert config_from_dict(old, "an old trial").train == default.train
    for key in ("deterministic", "cuda_graphs"):
        with pytest.raises(ConfigError) as e:
            load_study("smoke", [parse_set(f"train.{key}=1")])
        assert str(e.value) == f"--set train.{key}: train.{key}: expected true or false, got int 1"
