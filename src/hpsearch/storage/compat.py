"""Whether an existing study is one this command may read, or add trials to.

Three questions, each answered before anything is written:

- its objective: hpsearch ranks, keeps checkpoints and reports by one maximized value
  (validation accuracy), so a study that minimizes, or has several objectives (made with plain
  Optuna), is refused in one line (:func:`check_objective`, the one place to relax for a
  deliberate multi-objective mode);
- its study file: a study records the file it was made from (resolved path and SHA-256 of the
  content). "The same study file" is one with the same file name that is either at the recorded
  path (edited since, or run with other ``--set`` overrides: both are the user changing their own
  study) or byte-for-byte the recorded content (a copy on another host or in a container);
  anything else is refused unless ``--allow-other-study-file`` says the user means it;
- its search space: Optuna cannot change a parameter's kind, log scale or categorical choices
  within a study, and would fail the new trial with a ``ValueError`` after the budget was raised,
  so a space that disagrees with the recorded trials is refused before the run starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.study import StudyDirection

from hpsearch.config import SearchConfig, StudyConfig
from hpsearch.errors import ConfigError, StorageError
from hpsearch.space import Choice, Fixed, FloatRange, IntRange, Plain, Scalar, sample_values
from hpsearch.storage.state import OBJECTIVES_ATTR, STUDY_FILE_ATTR, STUDY_FILE_SHA_ATTR

ALLOW_FLAG = "--allow-other-study-file"


def check_objective(study: optuna.Study) -> None:
    """Refuse a study that does not maximize one value (hpsearch's validation accuracy) and is
    not one of hpsearch's own Pareto studies (``search.objectives``: accuracy up, latency or
    parameters down): its best trial would read upside down, or not at all."""
    check_directions(study.study_name, study.directions, study.user_attrs.get(OBJECTIVES_ATTR))


def check_directions(name: str, directions: list[StudyDirection], objectives: object) -> None:
    """:func:`check_objective` on what the storage holds (before the study is loaded)."""
    if len(directions) == 1 and directions[0] == StudyDirection.MAXIMIZE:
        return
    if (
        directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
        and isinstance(objectives, list)
        and len(objectives) == 2
        and objectives[0] == "val_accuracy"
    ):
        return
    if len(directions) == 1:
        what = "minimizes its objective"
    else:
        names = ", ".join(d.name.lower() for d in directions)
        what = f"has {len(directions)} objectives ({names})"
    raise StorageError(
        f"study {name!r} {what}; hpsearch reads and runs only studies that maximize one value "
        "(validation accuracy), or that it made with search.objectives: look at this one with "
        "hpsearch dashboard or the optuna CLI"
    )


def _fingerprint(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def record_study_file(study: optuna.Study, cfg: StudyConfig) -> None:
    """Record (or, when it is run again from the recorded path, refresh) the study file."""
    study.set_user_attr(STUDY_FILE_ATTR, str(cfg.path.resolve()))
    sha = _fingerprint(cfg.path)
    if sha is not None:
        study.set_user_attr(STUDY_FILE_SHA_ATTR, sha)


def check_study_file(study: optuna.Study, cfg: StudyConfig, allow_other: bool) -> bool:
    """Refuse a study file other than the one ``study`` was made from (see the module
    docstring); True when ``cfg``'s file is the recorded one at its recorded path (so its
    fingerprint may be refreshed), or when the study records none."""
    recorded = study.user_attrs.get(STUDY_FILE_ATTR)
    if not isinstance(recorded, str) or not recorded:
        return True  # a plain-Optuna study, adopted by its first hpsearch run
    path = cfg.path.resolve()
    same_path = Path(recorded) == path
    sha = study.user_attrs.get(STUDY_FILE_SHA_ATTR)
    same_content = not isinstance(sha, str) or sha == _fingerprint(cfg.path)  # older records
    if Path(recorded).stem == path.stem and (same_path or same_content):
        return same_path
    if allow_other:
        return False
    raise ConfigError(
        f"study {study.study_name!r} was made from {recorded}, not {path}"
        + ("" if Path(recorded).stem != path.stem else " (another file with other content)")
        + f": pass --study {recorded}, or a new --study-name, or {ALLOW_FLAG} to add trials "
        "from this file to it anyway"
    )


def space_distributions(search: SearchConfig) -> dict[str, list[BaseDistribution]]:
    """Every distribution this search can suggest, by parameter name: the most blocks the space
    allows, and each optimizer's range of a per-optimizer family. Built by walking
    :func:`sample_values` itself, so that it asks exactly what a trial would."""
    out: dict[str, list[BaseDistribution]] = {}
    optimizers: list[Scalar] = []

    def walk(optimizer: Scalar | None) -> None:
        def source(name: str, spec: Plain) -> Scalar:
            dist = _distribution(spec)
            if dist is not None and dist not in out.setdefault(name, []):
                out[name].append(dist)
            if name == "optimizer" and isinstance(spec, Choice):
                if not optimizers:
                    optimizers.extend(spec.choices)
                if optimizer in spec.choices:
                    return optimizer
            return _representative(name, spec)

        sample_values(search, source)

    walk(None)
    for optimizer in optimizers[1:]:
        walk(optimizer)
    return out


def _distribution(spec: Plain) -> BaseDistribution | None:
    if isinstance(spec, IntRange):
        return IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, FloatRange):
        return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, Choice):
        return CategoricalDistribution(list(spec.choices))
    return None


def _representative(name: str, spec: Plain) -> Scalar:
    """A value ``spec`` can produce; for ``n_blocks`` the largest, so every block is named."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        if name == "n_blocks":
            return max(int(c) for c in spec.choices)
        return spec.choices[0]
    return spec.high if name == "n_blocks" else spec.low


def _describe(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"the choices {list(d.choices)}"
    kind = "an integer" if isinstance(d, IntDistribution) else "a float"
    scale = " on a log scale" if getattr(d, "log", False) else ""
    return f"{kind} range{scale}"


def check_space(study: optuna.Study, cfg: StudyConfig) -> None:
    """Refuse a search space that Optuna would reject for this study's recorded trials."""
    recorded: dict[str, BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            recorded.setdefault(name, dist)
    if not recorded:
        return
    for name, dists in space_distributions(cfg.search).items():
        old = recorded.get(name)
        if old is None:
            continue
        for new in dists:
            try:
                check_distribution_compatibility(old, new)
            except ValueError:
                raise ConfigError(
                    f"study {study.study_name!r} cannot take the search space of {cfg.path}: "
                    f"its trials drew {name} from {_describe(old)}, this space from "
                    f"{_describe(new)} (Optuna cannot change a parameter's kind, log scale or "
                    "choices within a study); use a new --study-name"
                ) from None


def check_reuse(
    study: optuna.Study, cfg: StudyConfig, *, allow_other_file: bool, record: bool
) -> None:
    """Everything :mod:`hpsearch.storage.compat` checks before ``run`` or ``worker`` adds trials to
    an existing study; with ``record`` (``run``), the study file is recorded or refreshed."""
    check_objective(study)
    at_recorded_path = check_study_file(study, cfg, allow_other_file)
    check_space(study, cfg)
    if record and at_recorded_path:
        record_study_file(study, cfg)
