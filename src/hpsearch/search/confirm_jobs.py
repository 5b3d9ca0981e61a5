"""What ``hpsearch confirm`` trains, and who trains it: the (trial, run) jobs with their seeds
and configurations, and claiming them under the study's claim lock, so that several workers
(``--workers``, ``--gpus``) take each job once. No torch here: the command checks everything it
can before the training code is imported (:mod:`hpsearch.search.confirm_runs`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpsearch.config import Override, StudyConfig, config_from_dict
from hpsearch.errors import ConfigError
from hpsearch.space import trial_seed
from hpsearch.storage.claims import (
    Lock,
    claim_key,
    clear_claims,
    release_key,
)
from hpsearch.storage.state import (
    CLAIMS_ATTR,
    CONFIG_ATTR,
    CONFIRM_RUNS,
    SEED_ATTR,
    read_attrs,
    trial_attr,
)


def confirm_seed(seed: int, run: int) -> int:
    """The seed of confirm run ``run`` (0-based) of a trial whose own seed is ``seed``:
    reproducible, and never the trial's own seed."""
    digest = hashlib.sha256(f"hpsearch-confirm:{seed}:{run}".encode()).digest()
    derived = int.from_bytes(digest[:4], "big") % (2**31 - 1)
    return derived if derived != seed else (derived + 1) % (2**31 - 1)


def own_seed(t: FrozenTrial, cfg: StudyConfig) -> int:
    seed = trial_attr(t, SEED_ATTR, int)
    return int(seed) if seed is not None else trial_seed(cfg.search.seed, t.number)


def trial_config(
    t: FrozenTrial, overrides: Sequence[Override], fallback: StudyConfig | None
) -> StudyConfig:
    """The configuration trial ``t`` was trained with (its ``config`` attribute), with the
    ``--set`` overrides applied; a trial without one uses ``fallback`` (the study file)."""
    recorded = t.user_attrs.get(CONFIG_ATTR)
    if not isinstance(recorded, dict):
        if fallback is None:
            raise ConfigError(
                f"trial {t.number} records no configuration; pass the study file as --study"
            )
        return fallback
    doc: dict[str, Any] = json.loads(json.dumps(recorded))  # a deep copy
    for o in overrides:
        node = doc
        parts = o.key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{o.flag}: {part} is not a section")
            node = child
        node[parts[-1]] = o.value
    flags = " ".join(o.flag for o in overrides)
    origin = f"trial {t.number}'s configuration" + (f" with {flags}" if flags else "")
    return config_from_dict(doc, origin)


def setup(cfg: StudyConfig) -> dict[str, Any]:
    """What a run's accuracy depends on besides the parameters and the seed; runs of one trial
    are averaged only when it is the same (data.root, train.device may differ)."""
    return {
        "epochs": cfg.train.epochs,
        "image_size": cfg.data.image_size,
        "max_per_class": cfg.data.max_per_class,
        "val_max_per_class": cfg.data.val_max_per_class,
        "crop_scale": list(cfg.train.crop_scale),
        "flip": cfg.train.flip,
    }


def check_setup(study: optuna.Study, jobs: Sequence[Job]) -> None:
    """A trial confirmed before with another setup (``--set train.epochs=...``) is an error: its
    recorded runs would be averaged with runs that trained something else."""
    seen: set[int] = set()
    for j in jobs:
        if j.trial.number in seen:
            continue
        seen.add(j.trial.number)
        want = setup(j.cfg)
        for r in read_attrs(study, j.trial, [CONFIRM_RUNS]).get(CONFIRM_RUNS) or []:
            had = r.get("setup") if isinstance(r, dict) else None
            if isinstance(had, dict) and had != want:
                diff = ", ".join(
                    f"{k} {had.get(k)} then, {want.get(k)} now"
                    for k in want
                    if had.get(k) != want.get(k)
                )
                raise ConfigError(
                    f"trial {j.trial.number} has confirm runs with another setup ({diff}); "
                    "confirm it with the same --set values as before"
                )


@dataclass(frozen=True)
class Job:
    trial: FrozenTrial
    cfg: StudyConfig
    run: int  # 0-based
    seed: int

    @property
    def key(self) -> str:
        return f"{self.trial.number}:{self.run}"


def plan(top: Sequence[FrozenTrial], configs: Mapping[int, StudyConfig], seeds: int) -> list[Job]:
    """Every (trial, run) job, run-major: the first run of every trial before any second run,
    so that an interrupted confirm has compared all trials on the same number of seeds."""
    return [
        Job(t, configs[t.number], run, confirm_seed(own_seed(t, configs[t.number]), run))
        for run in range(seeds)
        for t in top
    ]


def clear_job_claims(study: optuna.Study) -> None:
    """Forget the claims of an earlier confirm (its workers are gone: this one starts them)."""
    clear_claims(study, CLAIMS_ATTR)


def _done_seeds(study: optuna.Study, t: FrozenTrial) -> set[int]:
    runs = read_attrs(study, t, [CONFIRM_RUNS]).get(CONFIRM_RUNS) or []
    return {int(r["seed"]) for r in runs if isinstance(r, dict) and "seed" in r}


def pending(study: optuna.Study, jobs: Sequence[Job]) -> list[Job]:
    """The jobs whose run is not recorded yet."""
    done = {
        t.number: _done_seeds(study, t) for t in {j.trial.number: j.trial for j in jobs}.values()
    }
    return [j for j in jobs if j.seed not in done[j.trial.number]]


def claim(study: optuna.Study, jobs: Sequence[Job], lock: Lock) -> tuple[Job | None, int]:
    """Take the first job that is neither recorded nor claimed; (job or None, jobs recorded)."""
    todo: list[Job] = []

    def keys() -> list[str]:
        todo[:] = pending(study, jobs)
        return [j.key for j in todo]

    key = claim_key(study, CLAIMS_ATTR, lock, keys)
    job = next((j for j in todo if j.key == key), None)
    return job, len(jobs) - len(todo)


def release(study: optuna.Study, job: Job, lock: Lock) -> None:
    release_key(study, CLAIMS_ATTR, job.key, lock)


@dataclass(frozen=True)
class TestSet:
    """``--data``: the directory, checked before any training."""

    path: Path
