"""The search space: what can be varied, the seed baseline, and trial -> TrialSpec.

A study file declares, per *family* (``lr``, ``kernel_size``, ...), either a fixed value, a list of
choices or a range. Per-block families expand into one parameter per conv block
(``kernel_size_b1``, ``kernel_size_b2``, ...). Parameter names are stable: they are the columns
users see in the dashboard and in exported CSV.

This module never imports Optuna: a trial is only used through ``suggest_*`` calls.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from hpsearch.engine.spec import ArchSpec, OptimSpec, TrialSpec

Scalar = int | float | str | bool


# --- parameter specs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    value: Scalar


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Choice:
    choices: tuple[Scalar, ...]


Plain = Fixed | IntRange | FloatRange | Choice


@dataclass(frozen=True)
class PerOptimizer:
    """A parameter whose range depends on the trial's optimizer (``lr: {sgd: {low: ..}, adam:
    ..}``): SGD and Adam want learning rates some 30x apart, so one shared range wastes trials on
    rates that diverge for one optimizer or crawl for the other. The parameter keeps its one name
    (one column in the dashboard); each trial draws it from its optimizer's range."""

    cases: tuple[tuple[str, Plain], ...]  # (optimizer, spec), in the study file's order

    def spec_for(self, optimizer: str) -> Plain:
        return dict(self.cases)[optimizer]


ParamSpec = Plain | PerOptimizer
PER_OPTIMIZER = ("lr", "momentum", "weight_decay")  # families that may depend on the optimizer


def contains(spec: ParamSpec, value: Scalar, optimizer: str | None = None) -> bool:
    """Whether ``value`` is a value ``spec`` can produce (for ``optimizer``, when it matters)."""
    if isinstance(spec, PerOptimizer):
        if optimizer is not None:
            return contains(spec.spec_for(optimizer), value)
        return any(contains(case, value) for _, case in spec.cases)
    if isinstance(spec, Fixed):
        return bool(spec.value == value and type(spec.value) is type(value))
    if isinstance(spec, Choice):
        return any(c == value and type(c) is type(value) for c in spec.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not spec.low <= value <= spec.high:
        return False
    if isinstance(spec, IntRange):
        return isinstance(value, int) and (value - spec.low) % spec.step == 0
    if spec.step is not None:
        k = (value - spec.low) / spec.step
        return math.isclose(k, round(k), abs_tol=1e-9)
    return True


# --- families ---------------------------------------------------------------------------------

ACTIVATIONS = ("relu", "gelu", "silu", "leaky_relu", "elu")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
HEADS = ("flatten", "gap")
SCHEDULES = ("step", "cosine")
# Families that, when the study's space leaves them out, take their value from the study's train
# section rather than from the seed baseline: ``crop_min`` is ``train.crop_scale``'s lower end.
FROM_TRAIN_CONFIG = ("crop_min",)
# Families used only with one learning-rate schedule: a cosine trial never draws them (they keep
# the seed's values, unused), so TPE is not asked to model knobs that change nothing.
STEP_ONLY = ("lr_decay_step", "lr_decay_gamma")
MAX_KERNEL = 11


def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if ok_lo and ok_hi:
            return None
        return f"{v!r} is outside {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    return check


def _one_of(options: tuple[str, ...]) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"{v!r} is not one of {', '.join(options)}"

    return check


def _odd_kernel(v: Any) -> str | None:
    if 1 <= v <= MAX_KERNEL and v % 2 == 1:
        return None
    return f"{v!r} is not an odd kernel size between 1 and {MAX_KERNEL}"


Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Family:
    """One knob of the search: its value type, whether it exists once per conv block, the values
    that make sense for it, and what it means."""

    kind: type
    per_block: bool
    check: Check
    help: str


FAMILIES: dict[str, Family] = {
    "n_blocks": Family(int, False, _between(1, 8), "number of conv blocks (each halves H and W)"),
    "channels": Family(int, True, _between(1, 4096), "output channels of a conv block"),
    "kernel_size": Family(int, True, _odd_kernel, "conv kernel size of a block (3/5/7)"),
    "activation": Family(str, False, _one_of(ACTIVATIONS), "activation function"),
    "batch_norm": Family(bool, False, lambda v: None, "batch norm after each conv"),
    "residual": Family(bool, False, lambda v: None, "skip connection around each conv"),
    "head": Family(
        str, False, _one_of(HEADS), "flatten (the seed's) or gap (global average pooling)"
    ),
    "dropout": Family(float, False, _between(0.0, 1.0, hi_open=True), "dropout before classifier"),
    "dense_units": Family(int, False, _between(1, 65536), "width of the dense layer"),
    "optimizer": Family(str, False, _one_of(OPTIMIZERS), "sgd (momentum), adam, adamw, rmsprop"),
    "lr": Family(float, False, _between(0.0, 10.0, lo_open=True), "learning rate"),
    "momentum": Family(float, False, _between(0.0, 1.0, hi_open=True), "momentum (sgd, rmsprop)"),
    "weight_decay": Family(float, False, _between(0.0, 1.0), "L2 coefficient"),
    "lr_schedule": Family(
        str, False, _one_of(SCHEDULES), "step (StepLR, the seed's) or cosine (annealed to ~0)"
    ),
    "lr_decay_step": Family(int, False, _between(1, 100_000), "StepLR: epochs between decays"),
    "lr_decay_gamma": Family(
        float, False, _between(0.0, 1.0, lo_open=True), "StepLR: factor at each decay"
    ),
    "batch_size": Family(int, False, _between(1, 65536), "training batch size"),
    "crop_min": Family(
        float,
        False,
        _between(0.0, 1.0, lo_open=True),
        "random-resized-crop: smallest area fraction (1.0: flips only; default train.crop_scale)",
    ),
}

# The seed's hand-tuned CNN (GUIDE section 1): 3x3 conv blocks of 32/64/128 channels with ReLU
# and max-pooling, a 512-unit dense layer, Adam at 1e-3 with weight decay 1e-4, StepLR(10, 0.9),
# batch 32. Per-block values are functions of the 1-based block index.
BASELINE: dict[str, Scalar] = {
    "n_blocks": 3,
    "activation": "relu",
    "batch_norm": False,
    "residual": False,
    "head": "flatten",
    "dropout": 0.0,
    "dense_units": 512,
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_decay_step": 10,
    "lr_decay_gamma": 0.9,
    "lr_schedule": "step",
    "batch_size": 32,
    "crop_min": 0.35,  # the seed's random-resized-crop, as train.crop_scale's default [0.35, 1]
}
BASELINE_PER_BLOCK: dict[str, Callable[[int], int]] = {
    "channels": lambda i: 32 * 2 ** (i - 1),
    "kernel_size": lambda i: 3,
}

_BLOCK_NAME = re.compile(r"^(?P<family>[a-z_]+)_b(?P<index>[1-9][0-9]*)$")


def split_block_name(name: str) -> tuple[str, int] | None:
    """``kernel_size_b2`` -> ``("kernel_size", 2)``; None for names that are not per-block."""
    m = _BLOCK_NAME.match(name)
    if m and m["family"] in FAMILIES and FAMILIES[m["family"]].per_block:
        return m["family"], int(m["index"])
    return None


def baseline_value(name: str) -> Scalar:
    """The seed baseline's value of a concrete parameter name (``lr``, ``channels_b2``...)."""
    block = split_block_name(name)
    if block is not None:
        return BASELINE_PER_BLOCK[block[0]](block[1])
    return BASELINE[name]


def coerce(family: str, value: Any) -> tuple[Scalar | None, str | None]:
    """Check a raw YAML value against a family's type and domain: (value, None) or (None, why)."""
    kind = FAMILIES[family].kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        return None, f"expected {kind.__name__}, got {type(value).__name__} {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{value!r} is not a finite number"
    problem = FAMILIES[family].check(value)
    if problem:
        return None, problem
    return cast(Scalar, value), None


# --- trial -> TrialSpec -----------------------------------------------------------------------


class Source(Protocol):
    """Where parameter values come from: an Optuna trial, stored params, or the baseline."""

    def __call__(self, name: str, spec: Plain) -> Scalar: ...


# --- what this module reads of a study file ----------------------------------------------------
# hpsearch.config validates a study file into frozen dataclasses that offer these; the space
# depends only on what it reads, so config may build on the space and never the other way round.


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class SearchConfig(Protocol):
    """The ``search:`` section: the sampler's name, the space and the grid."""

    @property
    def sampler(self) -> _Named: ...
    @property
    def space(self) -> Mapping[str, ParamSpec]: ...
    @property
    def grid(self) -> Mapping[str, tuple[Scalar, ...]]: ...


class _TrainConfig(Protocol):
    @property
    def epochs(self) -> int: ...
    @property
    def crop_scale(self) -> tuple[float, float]: ...
    @property
    def flip(self) -> bool: ...
    @property
    def deterministic(self) -> bool: ...
    @property
    def cuda_graphs(self) -> bool: ...


class StudyConfig(Protocol):
    """A study file: its ``train:`` section (epochs, augmentation) and its ``search:``."""

    @property
    def train(self) -> _TrainConfig: ...
    @property
    def search(self) -> SearchConfig: ...


def sample_values(search: SearchConfig, source: Source) -> dict[str, Any]:
    """Resolve every family to a value, asking ``source`` for each searched parameter.

    Returns family -> value, with per-block families as tuples of length ``n_blocks``.
    In a grid search only the parameters listed in ``search.grid`` are asked for; the others take
    their fixed value or the seed baseline's. A per-optimizer range is resolved to the range of
    the optimizer already drawn (``optimizer`` comes before ``lr`` in ``FAMILIES``), so
    ``source`` only ever sees plain specs.
    """
    grid = search.grid if search.sampler.name == "grid" else None
    values: dict[str, Any] = {}

    def get(family: str, name: str) -> Scalar:
        spec: ParamSpec | None = search.space.get(family)
        if spec is None and family in FROM_TRAIN_CONFIG:
            return None  # type: ignore[return-value]  # to_trial_spec reads the train section
        if isinstance(spec, PerOptimizer):
            spec = spec.spec_for(str(values["optimizer"]))
        if grid is not None:
            if name in grid:
                if spec is None or isinstance(spec, Fixed):
                    spec = Choice(grid[name])
                return source(name, spec)
            spec = spec if isinstance(spec, Fixed) else None
        if spec is None:
            return baseline_value(name)
        if isinstance(spec, Fixed):
            return spec.value
        return source(name, spec)

    n_blocks = int(get("n_blocks", "n_blocks"))
    values["n_blocks"] = n_blocks
    for family, fam in FAMILIES.items():
        if family == "n_blocks":
            continue
        if family in STEP_ONLY and values.get("lr_schedule") == "cosine":
            values[family] = baseline_value(family)  # unused by a cosine schedule: not drawn
        elif not fam.per_block:
            values[family] = get(family, family)
        elif grid is not None and family in grid:
            shared = get(family, family)  # one grid axis shared by every block
            values[family] = (shared,) * n_blocks
        else:
            values[family] = tuple(get(family, f"{family}_b{i}") for i in range(1, n_blocks + 1))
    return values


def to_trial_spec(values: Mapping[str, Any], cfg: StudyConfig, seed: int) -> TrialSpec:
    """Build the plain spec ``fit`` takes from resolved family values and the study config."""
    spec = _trial_spec(values, cfg.train.epochs, seed, cfg.train.crop_scale, cfg.train.flip)
    return replace(spec, deterministic=cfg.train.deterministic, cuda_graphs=cfg.train.cuda_graphs)


def seed_spec(
    epochs: int = 1,
    seed: int = 0,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    flip: bool = True,
) -> TrialSpec:
    """The seed's hand-tuned CNN (``BASELINE``) as a spec, for benchmarks and probes: the one
    source, so that no script retypes it."""
    n = int(BASELINE["n_blocks"])
    per_block = {f: tuple(v(i) for i in range(1, n + 1)) for f, v in BASELINE_PER_BLOCK.items()}
    values = {**BASELINE, **per_block, "crop_min": None}  # the crop is the crop_scale argument
    return _trial_spec(values, epochs, seed, crop_scale, flip)


def _trial_spec(
    values: Mapping[str, Any],
    epochs: int,
    seed: int,
    crop_scale: tuple[float, float],
    flip: bool,
) -> TrialSpec:
    lo = values.get("crop_min")
    if lo is not None:  # a searched crop: from crop_min to train.crop_scale's max (or crop_min)
        crop_scale = (float(lo), max(float(lo), crop_scale[1]))
    return TrialSpec(
        arch=ArchSpec(
            channels=tuple(int(c) for c in values["channels"]),
            kernel_sizes=tuple(int(k) for k in values["kernel_size"]),
            activation=str(values["activation"]),
            batch_norm=bool(values["batch_norm"]),
            residual=bool(values["residual"]),
            dropout=float(values["dropout"]),
            dense_units=int(values["dense_units"]),
            head=str(values["head"]),
        ),
        optim=OptimSpec(
            optimizer=str(values["optimizer"]),
            lr=float(values["lr"]),
            weight_decay=float(values["weight_decay"]),
            momentum=float(values["momentum"]),
            lr_decay_step=int(values["lr_decay_step"]),
            lr_decay_gamma=float(values["lr_decay_gamma"]),
            lr_schedule=str(values.get("lr_schedule", "step")),
        ),
        batch_size=int(values["batch_size"]),
        epochs=epochs,
        seed=seed,
        crop_scale=crop_scale,
        flip=flip,
    )


def trial_seed(base_seed: int, trial_number: int) -> int:
    """A distinct, reproducible seed per trial."""
    return (base_seed * 1_000_003 + trial_number) % (2**31 - 1)


class Recorder:
    """A :class:`Source` that answers from a fixed function and records what was asked."""

    def __init__(self, answer: Callable[[str], Scalar]) -> None:
        self.answer = answer
        self.params: dict[str, Scalar] = {}

    def __call__(self, name: str, spec: Plain) -> Scalar:
        value = self.answer(name)
        self.params[name] = value
        return value


def baseline_params(search: SearchConfig) -> dict[str, Scalar]:
    """The seed baseline as parameters of this search (what ``enqueue_trial`` takes)."""
    rec = Recorder(baseline_value)
    sample_values(search, rec)
    return rec.params


# Parameters that only make sense together: a near-baseline trial keeps or redraws each unit
# whole (the baseline's lr with another optimizer would be a rate that optimizer never asked for).
_UNITS: tuple[tuple[str, ...], ...] = (
    ("optimizer", "lr", "momentum", "weight_decay"),
    ("lr_schedule", "lr_decay_step", "lr_decay_gamma"),
)


def near_baseline_params(search: SearchConfig, rng: random.Random) -> dict[str, Scalar]:
    """A start-up trial near the seed baseline: each unit of parameters (a family, all blocks of
    a per-block family, or the optimizer with its rates) keeps the baseline's values with
    probability 1/2, and at least one unit is kept and one redrawn; the rest are left for the
    sampler to draw. Returns the kept parameters
    (what ``enqueue_trial`` takes: Optuna samples the missing ones)."""
    params = baseline_params(search)
    grouped: dict[str, list[str]] = {}
    for name in params:
        block = split_block_name(name)
        family = block[0] if block else name
        unit = next((u[0] for u in _UNITS if family in u), family)
        grouped.setdefault(unit, []).append(name)
    units = list(grouped.values())
    while True:
        keep = [rng.random() < 0.5 for _ in units]
        if len(units) < 2 or 0 < sum(keep) < len(units):
            break  # neither the baseline itself again nor a plain random draw
    return {n: params[n] for names, k in zip(units, keep, strict=True) if k for n in names}


def params_source(params: Mapping[str, Any], what: str) -> Source:
    """A :class:`Source` reading stored parameters, e.g. a finished trial's."""
    from hpsearch.errors import ConfigError

    def source(name: str, spec: Plain) -> Scalar:
        if name not in params:
            raise ConfigError(
                f"{what} has no parameter {name!r}: was it run with a different search space?"
            )
        value: Scalar = params[name]
        return value

    return source
