"""The thin adapter between Optuna and ``fit``: trial -> spec, per-epoch reports, pruning."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch import __version__
from hpsearch.checkpoint import CheckpointKeeper
from hpsearch.config import StudyConfig
from hpsearch.data import DeviceData
from hpsearch.model import param_count
from hpsearch.space import (
    Choice,
    FloatRange,
    IntRange,
    ParamSpec,
    Scalar,
    Source,
    sample_values,
    to_trial_spec,
    trial_seed,
)
from hpsearch.train import EpochMetrics, NonFiniteLoss, fit


def trial_source(trial: optuna.Trial) -> Source:
    """Ask an Optuna trial for each searched parameter."""

    def source(name: str, spec: ParamSpec) -> Scalar:
        if isinstance(spec, IntRange):
            return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        if isinstance(spec, FloatRange):
            return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        if isinstance(spec, Choice):
            value = trial.suggest_categorical(name, list(spec.choices))
            assert value is not None
            return value
        return spec.value

    return source


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "hpsearch": __version__}
    for pkg in ("torch", "torchvision", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # pragma: no cover - declared dependencies
            out[pkg] = "unknown"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()}"


EpochHook = Callable[[optuna.Trial, EpochMetrics], None]


def make_objective(
    cfg: StudyConfig,
    data: DeviceData,
    on_epoch: EpochHook | None = None,
    artifacts: Path | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective for ``study.optimize``: returns the final epoch's validation accuracy.

    With ``artifacts`` (a directory), a trial that finishes among the best
    ``search.keep_checkpoints`` keeps its trained model there as an Optuna artifact.
    """
    keeper = None
    if artifacts is not None and cfg.search.keep_checkpoints > 0:
        keeper = CheckpointKeeper(
            artifacts, cfg.search.keep_checkpoints, cfg, data.classes, data.image_size, versions()
        )
    static_attrs: dict[str, Any] = {
        "device": device_name(data.device),
        "versions": versions(),
        "config": cfg.to_dict(),
        "command": " ".join(sys.argv[1:])[:500],
        "worker": f"{platform.node()}:{os.getpid()}",
    }

    def objective(trial: optuna.Trial) -> float:
        values = sample_values(cfg.search, trial_source(trial))
        seed = trial_seed(cfg.search.seed, trial.number)
        spec = to_trial_spec(values, cfg, seed)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("n_params", param_count(spec.arch, len(data.classes), data.image_size))
        for k, v in static_attrs.items():
            trial.set_user_attr(k, v)
        seen = 0.0
        train_s = 0.0
        epoch_s = 0.0

        def report(m: EpochMetrics) -> None:
            nonlocal seen, train_s, epoch_s
            seen += m.train_images_per_s * m.train_seconds
            train_s += m.train_seconds
            epoch_s += m.epoch_seconds
            trial.report(m.val_accuracy, m.epoch)
            trial.set_user_attr("epochs_run", m.epoch)
            trial.set_user_attr("train_images_per_s", round(seen / train_s, 1))
            trial.set_user_attr("epoch_seconds", round(epoch_s / m.epoch, 3))
            trial.set_user_attr("train_loss", m.train_loss)
            trial.set_user_attr("val_loss", m.val_loss)
            if on_epoch is not None:
                on_epoch(trial, m)
            if m.epoch < m.epochs and trial.should_prune():  # a finished trial completes
                reason = f"pruned by the {cfg.search.pruner.name} pruner after epoch {m.epoch}"
                trial.set_user_attr("pruned_reason", reason)
                raise optuna.TrialPruned(reason)

        try:
            result = fit(spec, data, report, cfg.train.eval_batch_size)
        except NonFiniteLoss as e:
            trial.set_user_attr("pruned_reason", str(e))
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt as e:
            trial.set_user_attr("fail_reason", f"stopped by {type(e).__name__}")
            raise
        except torch.OutOfMemoryError as e:
            trial.set_user_attr("fail_reason", f"out of memory: {str(e).splitlines()[0][:300]}")
            if data.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        if keeper is not None:
            keeper.offer(trial, result.model, spec.arch, result.val_accuracy)
        return result.val_accuracy

    return objective
