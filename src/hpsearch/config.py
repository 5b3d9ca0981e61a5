"""Study files: YAML validated into typed, frozen objects.

Every mistake (unknown key, wrong type, impossible value) raises :class:`ConfigError` naming the
key and where it came from: the study file, or the ``--set`` / ``--sampler`` flag that set it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hpsearch.engine.spec import DataConfig
from hpsearch.errors import ConfigError, first_line
from hpsearch.files import what_is
from hpsearch.space import (
    BASELINE,
    FAMILIES,
    OPTIMIZERS,
    PER_OPTIMIZER,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    ParamSpec,
    PerOptimizer,
    Plain,
    Scalar,
    baseline_params,
    coerce,
    contains,
    split_block_name,
)

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "qmc")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
# what a trial can be judged on, and which way is better; the first objective is always accuracy
OBJECTIVES = {"val_accuracy": "maximize", "latency_ms": "minimize", "params": "minimize"}
DEVICES = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
DEFAULT_DATA_ROOT = "data/catdog"
# far above any CNN-classifier input; beyond it the decoded cache cannot fit in memory anyway
MAX_IMAGE_SIZE = 4096
# Optuna's samplers take seeds below 2**32; each worker adds an offset to search.seed
MAX_SEED = 2**31 - 1
MAX_NEAR_BASELINE = 1000  # start-up trials, each enqueued one by one in a new study
STUDIES_DIR = "studies"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # the most epochs a trial may run (pruning stops it earlier)
    device: str  # auto | cpu | cuda | cuda:N
    eval_batch_size: int
    crop_scale: tuple[float, float]  # random-resized-crop area fraction (min, max)
    flip: bool
    deterministic: bool = False  # exact re-runs on CUDA too (engine.determinism)
    cuda_graphs: bool = False  # the training step replayed from a CUDA graph (engine.graphs)


@dataclass(frozen=True)
class NamedOptions:
    """A sampler or pruner: its name and the keyword arguments for Optuna's constructor."""

    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Constraints:
    """A deployment budget (``search.constraints``): trials over it are infeasible. A trial with
    more parameters than ``max_params`` is pruned before it trains; ``max_latency_ms`` is
    judged on the trained model's inference time per image at batch 1 on ``latency_device``."""

    max_params: int | None = None
    max_latency_ms: float | None = None
    latency_device: str = "cpu"  # cpu | train (the device the trial trained on)

    @property
    def any(self) -> bool:
        return self.max_params is not None or self.max_latency_ms is not None


@dataclass(frozen=True)
class SearchConfig:
    sampler: NamedOptions
    pruner: NamedOptions
    seed: int
    enqueue_baseline: bool
    space: Mapping[str, ParamSpec]  # family -> spec; families left out take the baseline value
    grid: Mapping[str, tuple[Scalar, ...]]  # parameter -> values, for the grid sampler
    keep_checkpoints: int = 3  # checkpoints of the best trials kept as artifacts; 0 = none
    near_baseline: int = 0  # start-up trials keeping a random half of the baseline's choices
    constraints: Constraints = Constraints()
    # ("val_accuracy",), or with a second objective a Pareto front: latency_ms or params
    objectives: tuple[str, ...] = ("val_accuracy",)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]


@dataclass(frozen=True)
class StudyConfig:
    name: str  # the file's stem: the default Optuna study name
    path: Path
    data: DataConfig
    train: TrainConfig
    search: SearchConfig
    raw: Mapping[str, Any]  # the merged, resolved document, for provenance

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data (trial attrs, checkpoints)."""
        plain: dict[str, Any] = _plain(self.raw)
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- YAML ----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 insists on ``1.0e-3``) and
    refuses a key given twice in one mapping (YAML keeps the last silently: two ``data:``
    sections would drop the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# --- locating and loading ------------------------------------------------------------------


def _repo_studies() -> Path:
    return Path(__file__).resolve().parents[2] / STUDIES_DIR


def available_studies() -> list[str]:
    names: set[str] = set()
    for d in (Path.cwd() / STUDIES_DIR, _repo_studies()):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_study_file(study: str) -> Path:
    """``--study`` takes a path to a YAML file or a name under ``studies/``."""
    path = Path(study).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in study:
        if not path.is_file():
            raise ConfigError(f"study file {study} {what_is(path, 'a YAML file')}")
        return path
    for d in (Path.cwd() / STUDIES_DIR, _repo_studies()):
        candidate = d / f"{study}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_studies()) or "none"
    raise ConfigError(f"unknown study {study!r}: no {STUDIES_DIR}/{study}.yaml (known: {known})")


@dataclass(frozen=True)
class Override:
    """One ``--set key=value`` (or a flag such as ``--sampler`` that means one)."""

    key: str
    value: Any
    flag: str  # how the user wrote it, for error messages


def parse_set(item: str) -> Override:
    """``"train.epochs=3"`` -> Override; the value is read as YAML (``3`` is an int)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    try:
        value = parse_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return Override(key, value, f"--set {key}")


def load_study(study: str, overrides: Sequence[Override] = ()) -> StudyConfig:
    """Find, read, override and validate a study file."""
    path = find_study_file(study)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a study file is a mapping of sections, got {_tname(doc)}")
    flags: dict[str, str] = {}
    for o in overrides:
        _apply(doc, o)
        flags[o.key] = o.flag
    try:
        return _validate(doc, path, "data.root" in flags)
    except _Invalid as e:
        where = next(
            (
                f
                for k, f in flags.items()
                # the override set this key, something inside it, or a key inside the bad one
                if e.key == k or e.key.startswith(k + ".") or k.startswith(e.key + ".")
            ),
            str(path),
        )
        raise ConfigError(_one_line(f"{where}: {e.key}: {e.msg}")) from None


def _one_line(text: str) -> str:
    """Control characters (a key or value holding a newline) escaped, so a message stays one
    line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def config_from_dict(doc: Mapping[str, Any], origin: str) -> StudyConfig:
    """Validate a resolved study document (as ``StudyConfig.to_dict`` returns it), e.g. the one
    recorded in a checkpoint; ``origin`` names where it came from in error messages."""
    try:
        return _validate(doc, Path(origin), True)
    except _Invalid as e:
        raise ConfigError(_one_line(f"{origin}: {e.key}: {e.msg}")) from None


def _apply(doc: dict[str, Any], o: Override) -> None:
    parts = o.key.split(".")
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{o.flag}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = o.value


# --- validation ----------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, key: str, msg: str) -> None:
        super().__init__(f"{key}: {msg}")
        self.key = key
        self.msg = msg


def _tname(v: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(v), type(v).__name__)


def _section(
    doc: Mapping[str, Any], key: str, prefix: str, allowed: Sequence[str]
) -> dict[str, Any]:
    full = f"{prefix}{key}"
    value = doc.get(key)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _Invalid(full, f"expected a mapping, got {_tname(value)}")
    _known(value, allowed, full)
    return value


def _known(d: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
            raise _Invalid(f"{prefix}.{k}" if prefix else str(k), f"unknown key ({hint})")


def _int(d: Mapping[str, Any], k: str, key: str, default: int | None, minimum: int) -> int | None:
    v = d.get(k, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Invalid(key, f"expected an integer, got {_tname(v)} {v!r}")
    if v < minimum:
        raise _Invalid(key, f"must be >= {minimum}, got {v}")
    return v


def _req_int(d: Mapping[str, Any], k: str, key: str, default: int, minimum: int) -> int:
    v = _int(d, k, key, default, minimum)
    if v is None:
        raise _Invalid(key, "expected an integer, got nothing")
    return v


def _bool(d: Mapping[str, Any], k: str, key: str, default: bool) -> bool:
    v = d.get(k, default)
    if not isinstance(v, bool):
        raise _Invalid(key, f"expected true or false, got {_tname(v)} {v!r}")
    return v


def _validate(doc: Mapping[str, Any], path: Path, root_is_set: bool) -> StudyConfig:
    _known(doc, ("data", "train", "search"), "")
    d = _section(doc, "data", "", ("root", "image_size", "max_per_class", "val_max_per_class"))
    # precedence: --set data.root, then HPSEARCH_DATA, then the file, then data/catdog
    env_root = None if root_is_set else os.environ.get("HPSEARCH_DATA")
    root_raw = env_root or d.get("root") or DEFAULT_DATA_ROOT
    if not isinstance(root_raw, str):
        raise _Invalid("data.root", f"expected a path, got {_tname(root_raw)}")
    image_size = _req_int(d, "image_size", "data.image_size", 128, 8)
    if image_size > MAX_IMAGE_SIZE:
        raise _Invalid(
            "data.image_size", f"must be <= {MAX_IMAGE_SIZE} (pixels a side), got {image_size}"
        )
    data = DataConfig(
        root=Path(root_raw).expanduser().resolve(),
        image_size=image_size,
        max_per_class=_int(d, "max_per_class", "data.max_per_class", None, 1),
        val_max_per_class=_int(d, "val_max_per_class", "data.val_max_per_class", None, 1),
    )

    t = _section(
        doc,
        "train",
        "",
        (
            "epochs",
            "device",
            "eval_batch_size",
            "crop_scale",
            "flip",
            "deterministic",
            "cuda_graphs",
        ),
    )
    device = t.get("device", "auto")
    if not isinstance(device, str) or not DEVICES.match(device):
        raise _Invalid("train.device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    crop = t.get("crop_scale", [0.35, 1.0])
    if (
        not isinstance(crop, list)
        or len(crop) != 2
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in crop)
        or not 0 < crop[0] <= crop[1] <= 1
    ):
        raise _Invalid(
            "train.crop_scale", f"expected [min, max] with 0 < min <= max <= 1, got {crop!r}"
        )
    train = TrainConfig(
        epochs=_req_int(t, "epochs", "train.epochs", 10, 1),
        device=device,
        eval_batch_size=_req_int(t, "eval_batch_size", "train.eval_batch_size", 500, 1),
        crop_scale=(float(crop[0]), float(crop[1])),
        flip=_bool(t, "flip", "train.flip", True),
        deterministic=_bool(t, "deterministic", "train.deterministic", False),
        cuda_graphs=_bool(t, "cuda_graphs", "train.cuda_graphs", False),
    )

    s = _section(
        doc,
        "search",
        "",
        (
            "sampler",
            "pruner",
            "seed",
            "enqueue_baseline",
            "near_baseline",
            "space",
            "grid",
            "keep_checkpoints",
            "constraints",
            "objectives",
        ),
    )
    space_raw = _section(s, "space", "search.", tuple(FAMILIES))
    space = {fam: _param_spec(fam, v, f"search.space.{fam}") for fam, v in space_raw.items()}
    _check_blocks(space, image_size)
    _check_per_optimizer(space)
    sampler = _named(s.get("sampler", "tpe"), "search.sampler", SAMPLERS)
    grid = _grid(s.get("grid"), space, sampler.name == "grid")
    search = SearchConfig(
        sampler=sampler,
        pruner=_named(s.get("pruner", "median"), "search.pruner", PRUNERS),
        seed=_req_int(s, "seed", "search.seed", 0, 0),
        enqueue_baseline=_bool(s, "enqueue_baseline", "search.enqueue_baseline", False),
        space=MappingProxyType(space),
        grid=MappingProxyType(grid),
        keep_checkpoints=_req_int(s, "keep_checkpoints", "search.keep_checkpoints", 3, 0),
        near_baseline=_req_int(s, "near_baseline", "search.near_baseline", 0, 0),
        constraints=_constraints(s),
        objectives=_objectives(s.get("objectives", ["val_accuracy"])),
    )
    if len(search.objectives) > 1:
        if search.pruner.name != "none":
            raise _Invalid(
                "search.pruner",
                f"{search.pruner.name} cannot prune a study with two objectives (Optuna does not "
                "prune multi-objective studies); set search.pruner: none",
            )
        if sampler.name == "cmaes":
            raise _Invalid(
                "search.sampler", "cmaes takes one objective; use tpe, gp, random, qmc or grid"
            )
    for key, number, most in (
        ("search.seed", search.seed, MAX_SEED),
        ("search.near_baseline", search.near_baseline, MAX_NEAR_BASELINE),
    ):
        if number > most:
            raise _Invalid(key, f"must be <= {most}, got {number}")
    if (search.enqueue_baseline or search.near_baseline) and sampler.name != "grid":
        for name, value in baseline_params(search).items():
            fam = split_block_name(name)
            spec = space[fam[0] if fam else name]
            if not contains(spec, value, str(BASELINE["optimizer"])):
                raise _Invalid(
                    f"search.space.{fam[0] if fam else name}",
                    f"the seed baseline's {name}={value!r} is outside this range "
                    "(widen it, or set search.enqueue_baseline: false and "
                    "search.near_baseline: 0)",
                )

    resolved = {
        "data": {**d, "root": str(data.root), "image_size": image_size},
        "train": {
            "epochs": train.epochs,
            "device": train.device,
            "eval_batch_size": train.eval_batch_size,
            "crop_scale": list(train.crop_scale),
            "flip": train.flip,
            "deterministic": train.deterministic,
            "cuda_graphs": train.cuda_graphs,
        },
        "search": dict(s),
    }
    return StudyConfig(path.stem, path, data, train, search, MappingProxyType(resolved))


# The options each sampler and pruner takes (Optuna's constructors' keywords) and what each must
# be: ("int", low) an integer >= low; ("float", low, high) a number in [low, high] (low excluded
# when it is 0.0 and the option is a scale); ("bool",); ("choice", a, b, ...). "auto" is also
# accepted where Optuna takes it. Checked when the study file is read, before anything opens the
# storage: Optuna itself checks some only when it first prunes (hyperband's max_resource: 0 was
# a "math domain error" in every trial after its first epoch) or with Python's raw TypeError.
_STARTUP = {"n_startup_trials": ("int", 0), "n_warmup_steps": ("int", 0)}
_MEDIAN = {**_STARTUP, "interval_steps": ("int", 1), "n_min_trials": ("int", 1)}
_SEED = {"seed": ("int", 0)}
_WARN = {"warn_independent_sampling": ("bool",)}
OPTIONS: dict[str, dict[str, dict[str, tuple[Any, ...]]]] = {
    "search.pruner": {
        "median": _MEDIAN,
        "percentile": {**_MEDIAN, "percentile": ("float", 0.0, 100.0)},
        "successive_halving": {
            "min_resource": ("int", 1, "auto"),
            "reduction_factor": ("int", 2),
            "min_early_stopping_rate": ("int", 0),
            "bootstrap_count": ("int", 0),
        },
        "hyperband": {
            "min_resource": ("int", 1),
            "max_resource": ("int", 1, "auto"),
            "reduction_factor": ("int", 2),
            "bootstrap_count": ("int", 0),
        },
        "none": {},
    },
    "search.sampler": {
        "tpe": {
            **_SEED,
            **_WARN,
            "n_startup_trials": ("int", 0),
            "n_ei_candidates": ("int", 1),
            "multivariate": ("bool",),
            "group": ("bool",),
            "constant_liar": ("bool",),
            "consider_endpoints": ("bool",),
            "consider_magic_clip": ("bool",),
            "prior_weight": ("float", 0.0, math.inf),
        },
        "random": _SEED,
        "grid": _SEED,
        "gp": {
            **_SEED,
            **_WARN,
            "n_startup_trials": ("int", 0),
            "deterministic_objective": ("bool",),
        },
        "cmaes": {
            **_SEED,
            **_WARN,
            "n_startup_trials": ("int", 0),
            "sigma0": ("float", 0.0, math.inf),
            "restart_strategy": ("choice", "ipop", "bipop"),
            "popsize": ("int", 1),
            "inc_popsize": ("int", 1),
            "use_separable_cma": ("bool",),
            "with_margin": ("bool",),
            "lr_adapt": ("bool",),
            "consider_pruned_trials": ("bool",),
        },
        "qmc": {**_SEED, **_WARN, "qmc_type": ("choice", "sobol", "halton"), "scramble": ("bool",)},
    },
}


def _check_options(key: str, name: str, options: Mapping[str, Any]) -> None:
    """Each option of sampler or pruner ``name`` is one it takes, of the type and range it
    takes (see OPTIONS); the first that is not is an _Invalid naming it."""
    takes = OPTIONS[key][name]
    for option, value in options.items():
        where = f"{key}.{option}"
        if option not in takes:
            known = ", ".join(sorted(takes)) or "none"
            raise _Invalid(where, f"{name} takes no option {option!r} (its options: {known})")
        kind, *rule = takes[option]
        got = f"got {value!r}" + (f" (a {type(value).__name__})" if isinstance(value, str) else "")
        if "auto" in rule and value == "auto":
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise _Invalid(where, f"expected true or false, {got}")
        elif kind == "choice":
            if value not in rule:
                raise _Invalid(where, f"expected one of {', '.join(rule)}, {got}")
        elif kind == "int":
            low = rule[0]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                auto = " or auto" if "auto" in rule else ""
                raise _Invalid(where, f"expected a whole number >= {low}{auto}, {got}")
        else:  # float
            low, high = rule
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not (
                low < value <= high if low == 0.0 and high == math.inf else low <= value <= high
            ):
                span = f"above {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
                raise _Invalid(where, f"expected a number {span}, {got}")
    if name == "hyperband":
        low, high = options.get("min_resource", 1), options.get("max_resource", "auto")
        if high != "auto" and high < low:
            raise _Invalid(
                f"{key}.max_resource", f"must be at least min_resource ({low}), got {high}"
            )


def _named(raw: Any, key: str, names: Sequence[str]) -> NamedOptions:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise _Invalid(key, f"expected a name or a mapping with 'name', got {_tname(raw)}")
    name = raw.get("name")
    if name not in names:
        raise _Invalid(
            key, f"unknown {key.rsplit('.', 1)[-1]} {name!r} (choose from {', '.join(names)})"
        )
    options = {k: v for k, v in raw.items() if k != "name"}
    _check_options(key, str(name), options)
    return NamedOptions(str(name), MappingProxyType(options))


def _param_spec(fam: str, raw: Any, key: str) -> ParamSpec:
    if (
        fam in PER_OPTIMIZER
        and isinstance(raw, dict)
        and raw
        and not {"low", "high", "choices"} & set(raw)
    ):
        cases = []
        for opt, case in raw.items():
            if opt not in OPTIMIZERS:
                raise _Invalid(
                    f"{key}.{opt}",
                    f"not an optimizer: a per-optimizer {fam} takes one entry per optimizer "
                    f"({', '.join(OPTIMIZERS)})",
                )
            cases.append((str(opt), _plain_spec(fam, case, f"{key}.{opt}")))
        return PerOptimizer(tuple(cases))
    return _plain_spec(fam, raw, key)


def _check_per_optimizer(space: Mapping[str, ParamSpec]) -> None:
    """Every optimizer the space can draw needs its case in each per-optimizer family."""
    spec = space.get("optimizer", Fixed(BASELINE["optimizer"]))
    drawn = spec.choices if isinstance(spec, Choice) else (getattr(spec, "value", None),)
    for fam, s in space.items():
        if isinstance(s, PerOptimizer):
            missing = [str(o) for o in drawn if o not in dict(s.cases)]
            if missing:
                raise _Invalid(
                    f"search.space.{fam}",
                    f"no range for optimizer {', '.join(missing)} (search.space.optimizer "
                    "can draw it)",
                )


def _plain_spec(fam: str, raw: Any, key: str) -> Plain:
    kind = FAMILIES[fam].kind

    def value(v: Any, where: str) -> Scalar:
        ok, problem = coerce(fam, v)
        if problem is not None or ok is None:
            raise _Invalid(where, problem or "missing value")
        return ok

    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        return Fixed(value(raw, key))
    if "choices" in raw:
        _known(raw, ("choices",), key)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise _Invalid(f"{key}.choices", "expected a non-empty list of values")
        vals = tuple(value(c, f"{key}.choices") for c in choices)
        if len(set(vals)) != len(vals):
            raise _Invalid(f"{key}.choices", f"repeated values in {list(vals)}")
        return Choice(vals)
    if kind not in (int, float):
        raise _Invalid(key, f"{fam} takes a value or a list of choices, not a range")
    _known(raw, ("low", "high", "log", "step"), key)
    for k in ("low", "high"):
        if k not in raw:
            raise _Invalid(key, f"a range needs 'low' and 'high' (missing {k!r})")
    low, high = value(raw["low"], f"{key}.low"), value(raw["high"], f"{key}.high")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if low >= high:
        raise _Invalid(key, f"empty range: low {low} must be below high {high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise _Invalid(f"{key}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise _Invalid(f"{key}.low", f"a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise _Invalid(f"{key}.step", f"expected a positive number, got {step!r}")
        if log:
            raise _Invalid(f"{key}.step", "step and log cannot be combined")
    if kind is int:
        if step is not None and not isinstance(step, int):
            raise _Invalid(f"{key}.step", f"expected an integer, got {step!r}")
        if fam == "kernel_size":  # odd sizes only: step 2 from an odd low to an odd high
            step = 2 if step is None else step
            if step % 2 or low % 2 == 0 or high % 2 == 0:
                raise _Invalid(
                    key,
                    "kernel sizes are odd: a range needs an odd low and high and an even step "
                    f"(default 2), got low {low}, high {high}, step {step}",
                )
        return IntRange(int(low), int(high), log, int(step or 1))
    return FloatRange(float(low), float(high), log, None if step is None else float(step))


def _objectives(raw: Any) -> tuple[str, ...]:
    key = "search.objectives"
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise _Invalid(key, f"expected a list of objective names, got {_tname(raw)} {raw!r}")
    unknown = [o for o in raw if o not in OBJECTIVES]
    if unknown:
        raise _Invalid(
            key, f"unknown objective {unknown[0]!r} (choose from {', '.join(OBJECTIVES)})"
        )
    if not raw or raw[0] != "val_accuracy" or len(raw) > 2 or len(set(raw)) != len(raw):
        raise _Invalid(
            key,
            "expected [val_accuracy], or [val_accuracy, latency_ms] or [val_accuracy, params] "
            f"for a Pareto front, got {raw!r}",
        )
    return tuple(raw)


def _constraints(search: Mapping[str, Any]) -> Constraints:
    c = _section(
        search, "constraints", "search.", ("max_params", "max_latency_ms", "latency_device")
    )
    latency = c.get("max_latency_ms")
    if latency is not None and (
        isinstance(latency, bool) or not isinstance(latency, int | float) or not latency > 0
    ):
        raise _Invalid(
            "search.constraints.max_latency_ms",
            f"expected a positive number of milliseconds, got {_tname(latency)} {latency!r}",
        )
    device = c.get("latency_device", "cpu")
    if device not in ("cpu", "train"):
        raise _Invalid(
            "search.constraints.latency_device",
            f"expected cpu or train (the device the trial trained on), got {device!r}",
        )
    return Constraints(
        max_params=_int(c, "max_params", "search.constraints.max_params", None, 1),
        max_latency_ms=None if latency is None else float(latency),
        latency_device=str(device),
    )


def _most_blocks(space: Mapping[str, ParamSpec]) -> int:
    """The most conv blocks the space can draw."""
    spec = space.get("n_blocks", Fixed(BASELINE["n_blocks"]))
    most: int = {
        Fixed: lambda s: s.value,
        Choice: lambda s: max(s.choices),
        IntRange: lambda s: s.high,
    }[type(spec)](spec)
    return most


def _check_blocks(space: Mapping[str, ParamSpec], image_size: int) -> None:
    most = _most_blocks(space)
    if 2**most > image_size:
        raise _Invalid(
            "search.space.n_blocks",
            f"{most} blocks halve a {image_size}px image below 1 pixel "
            f"(at most {image_size.bit_length() - 1} blocks at this size)",
        )


def _grid(raw: Any, space: Mapping[str, ParamSpec], needed: bool) -> dict[str, tuple[Scalar, ...]]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Invalid(
            "search.grid", f"expected a mapping of parameter -> values, got {_tname(raw)}"
        )
    if needed and not raw:
        raise _Invalid(
            "search.grid", "the grid sampler needs values, e.g. grid: {lr: [1e-3, 1e-2]}"
        )
    grid: dict[str, tuple[Scalar, ...]] = {}
    for name, values in raw.items():
        key = f"search.grid.{name}"
        block = split_block_name(str(name))
        fam = block[0] if block else str(name)
        if fam not in FAMILIES:
            raise _Invalid(key, f"unknown parameter (known: {', '.join(FAMILIES)})")
        if block is not None and not 1 <= block[1] <= _most_blocks(space):
            raise _Invalid(
                key,
                f"block {block[1]} does not exist: search.space.n_blocks allows at most "
                f"{_most_blocks(space)}",
            )
        spec = space.get(fam)
        if isinstance(spec, Fixed):
            if needed:
                raise _Invalid(
                    key, f"{fam} is fixed in search.space; make it a range or drop it here"
                )
            spec = None  # the grid is not used by this sampler
        if not isinstance(values, list) or not values:
            raise _Invalid(key, "expected a non-empty list of values")
        checked: list[Scalar] = []
        for v in values:
            ok, problem = coerce(fam, v)
            if problem is not None or ok is None:
                raise _Invalid(key, problem or "missing value")
            if spec is not None and not contains(spec, ok):
                raise _Invalid(key, f"grid value {ok!r} is outside search.space.{fam}")
            checked.append(ok)
        if len(set(checked)) != len(checked):
            raise _Invalid(key, f"repeated values in {checked}")
        grid[str(name)] = tuple(checked)
    return grid
