"""What ``hpsearch train`` does, in this process: train one configuration of a study without a
search (the seed baseline, the study's best trial or trial N), with the spec derivation and the
out-of-memory handling of a trial of the search (:mod:`hpsearch.search.objective`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.search.run import Say, device_for, load

if TYPE_CHECKING:
    import torch

    from hpsearch.engine.train import EpochMetrics, FitResult


@dataclass(frozen=True)
class TrainOptions:
    """``hpsearch train``: train one configuration of the study without a search."""

    study: str
    trial: str = "baseline"  # baseline, best or a trial number
    overrides: tuple[str, ...] = ()
    storage: str | None = None
    study_name: str | None = None


@dataclass(frozen=True)
class Trained:
    """What ``hpsearch train`` trained and how it did."""

    label: str  # "baseline" or "trial N"
    result: FitResult
    params: dict[str, Any]
    seed: int
    device: torch.device


def train_one(
    opts: TrainOptions, say: Say, on_epoch: Callable[[EpochMetrics], None] | None = None
) -> Trained:
    """Train one configuration of the study without a search: the seed baseline, the study's
    best trial or trial N (in any state), with the seed it was (or would be) trained with; the
    same spec and out-of-memory handling as a trial of the search."""
    cfg = load(opts.study, opts.overrides)

    from hpsearch.engine.data import load_data
    from hpsearch.engine.train import NonFiniteLoss
    from hpsearch.search.objective import TrialOutOfMemory, derive_spec, fit_in_memory
    from hpsearch.space import Recorder, baseline_value, params_source

    label = str(opts.trial)
    if label not in ("baseline", "best") and not label.isdigit():
        raise ConfigError(f"--trial: expected baseline, best or a trial number, got {label!r}")
    if label == "baseline":
        rec = Recorder(baseline_value)
        spec = derive_spec(cfg, rec, 0, {})
        params = rec.params
    else:
        from hpsearch.results.read import open_existing, pick_trial
        from hpsearch.storage.urls import storage_url

        study = open_existing(storage_url(opts.storage), opts.study_name or cfg.name)
        number = None if label == "best" else int(label)
        t = pick_trial(study, number, any_state=True)
        # its parameters are read as they were drawn: a grid trial holds only the grid's (the
        # rest are fixed or the baseline's) whatever sampler the study file names now
        from dataclasses import replace

        from hpsearch.search.confirm_jobs import trial_config

        drawn = replace(cfg, search=trial_config(t, (), cfg).search)
        spec = derive_spec(
            drawn, params_source(t.params, f"trial {t.number}"), t.number, t.user_attrs
        )
        params = dict(t.params)
        label = f"trial {t.number}"
    device = device_for(cfg)
    data = load_data(cfg.data, device)
    say(
        f"training {label} for {spec.epochs} epochs on {len(data.train_labels)} images at "
        f"{data.image_size}px on {device}"
    )
    what = label if label.startswith("trial ") else f"trial {label}"
    try:
        result = fit_in_memory(spec, data, on_epoch, cfg.train.eval_batch_size)
    except NonFiniteLoss as e:
        raise HpsearchError(f"{what}: {e}") from None
    except TrialOutOfMemory as e:
        raise HpsearchError(f"{what} ran {e}") from None
    return Trained(label, result, params, spec.seed, device)
