"""The thin adapter between Optuna and ``fit``: trial -> spec, per-epoch reports, pruning."""

from __future__ import annotations

import gc
import logging
import os
import platform
import re
import traceback
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch import __version__
from hpsearch.config import StudyConfig
from hpsearch.engine.data import DeviceData
from hpsearch.engine.latency import latency_ms
from hpsearch.engine.model import activation_count, param_count
from hpsearch.engine.spec import TrialSpec
from hpsearch.engine.train import EpochMetrics, FitResult, NonFiniteLoss, fit
from hpsearch.errors import first_line
from hpsearch.search.gpu_share import GpuLock, GpuShare, read_share
from hpsearch.search.stopping import raise_if_pending
from hpsearch.space import (
    Choice,
    FloatRange,
    IntRange,
    Plain,
    Scalar,
    Source,
    sample_values,
    to_trial_spec,
    trial_seed,
)
from hpsearch.storage.checkpoint import CheckpointKeeper
from hpsearch.storage.secrets import mask_secrets
from hpsearch.storage.state import (
    ACTIVATIONS_ATTR,
    BATCH_SIZE_ATTR,
    COMMAND_ATTR,
    CONFIG_ATTR,
    DEVICE_ATTR,
    EPOCH_SECONDS_ATTR,
    EPOCHS_RUN_ATTR,
    FAIL_REASON_ATTR,
    LATENCY_DEVICE_ATTR,
    LATENCY_MS_ATTR,
    N_PARAMS_ATTR,
    OOM_ALONE_ATTR,
    OOM_ATTR,
    OOM_EVENTS_ATTR,
    PRUNED_REASON_ATTR,
    RETRIED_ALONE_ATTR,
    SEED_ATTR,
    STOPPED_PREFIX,
    TRAIN_IMAGES_PER_S_ATTR,
    TRAIN_LOSS_ATTR,
    VAL_ACCURACY_BY_EPOCH_ATTR,
    VAL_LOSS_ATTR,
    VERSIONS_ATTR,
    WORKER_ATTR,
    forget_intermediate_values,
    record_on_trial,
)

_log = logging.getLogger("hpsearch")


class TrialOutOfMemory(Exception):
    """A trial ran out of GPU or host memory; it fails and the search carries on.
    ``free_bytes``: the device's free memory when it ran out (None on a CPU)."""

    def __init__(self, message: str, free_bytes: int | None = None) -> None:
        super().__init__(message)
        self.free_bytes = free_bytes


# What running out of memory looks like: (class, pattern searched in the message or None for
# any, whose memory). The caching allocator raises OutOfMemoryError, but a card that neighbours
# fill also fails CUDA's own allocations, each library's handle and workspace, with other errors.
# torch.AcceleratorError (torch >= 2.8; a RuntimeError, as these were before) is what
# C10_CUDA_CHECK raises, with "CUDA error: <cudaGetErrorString>" and hints on the next lines.
OUT_OF_MEMORY: tuple[tuple[type[BaseException], str | None, str], ...] = (
    (torch.OutOfMemoryError, None, "GPU"),  # "CUDA out of memory. Tried to allocate 2.00 GiB..."
    (MemoryError, None, "host"),
    (RuntimeError, r"CUDA error: out of memory", "GPU"),  # cudaErrorMemoryAllocation
    (RuntimeError, r"CUDA driver error: out of memory", "GPU"),  # CUDA_ERROR_OUT_OF_MEMORY
    (RuntimeError, r"CUDA ran out of memory outside PyTorch's allocator", "GPU"),
    (RuntimeError, r"CUBLAS_STATUS_ALLOC_FAILED", "GPU"),
    # cublasCreate fails so on a full card (the handle's workspace cannot be had)
    (RuntimeError, r"CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate", "GPU"),
    (RuntimeError, r"CUDNN_STATUS_ALLOC_FAILED", "GPU"),  # cuDNN 8
    (RuntimeError, r"CUDNN_STATUS_INTERNAL_ERROR(?![A-Z_])", "GPU"),  # cuDNN's failed workspace
    (RuntimeError, r"CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED", "GPU"),  # cuDNN 9
    (RuntimeError, r"CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED", "host"),
    (RuntimeError, r"CUSOLVER_STATUS_ALLOC_FAILED", "GPU"),
    (RuntimeError, r"CUFFT_ALLOC_FAILED", "GPU"),
    (RuntimeError, r"can't allocate memory", "host"),  # DefaultCPUAllocator
    (RuntimeError, r"not enough memory", "host"),  # the same on Windows
)


def out_of_memory_where(e: BaseException) -> str | None:
    """``"GPU"`` or ``"host"`` when ``e`` says that memory ran out (see ``OUT_OF_MEMORY``),
    else None."""
    text = str(e)
    for cls, pattern, where in OUT_OF_MEMORY:
        if isinstance(e, cls) and (pattern is None or re.search(pattern, text)):
            return where
    return None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says that GPU or host memory ran out (see ``OUT_OF_MEMORY``)."""
    return out_of_memory_where(e) is not None


def free_memory(device: torch.device) -> None:
    """Collect what a failed trial left and give cached device memory back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_device_bytes(device: torch.device) -> int | None:
    """The device's free memory as its driver counts it (every process's use), or None on a
    CPU or when CUDA cannot say."""
    if device.type != "cuda":
        return None
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except RuntimeError:
        return None


def device_share(device: torch.device, environ: Mapping[str, str] | None = None) -> GpuShare:
    """How this worker shares ``device``: on a GPU, as the launcher's environment says (the
    GPU's UUID names it when the launcher did not); on a CPU, alone."""
    if device.type != "cuda":
        return GpuShare()
    share = read_share(environ)
    if share.sharers > 1 and share.gpu_id is None:
        try:
            uuid = str(torch.cuda.get_device_properties(device).uuid)
        except (RuntimeError, AssertionError):
            uuid = ""
        share = GpuShare(share.sharers, f"GPU-{uuid}" if uuid else None)
    return share


def oom_event(sharers: int, alone: bool, free_bytes: int | None) -> dict[str, Any]:
    """One entry of a trial's ``oom_events``: how many workers shared its GPU, whether it ran
    alone (no other trial training beside it), and the device's free memory then."""
    return {"sharers": sharers, "alone": alone, "free_bytes": free_bytes}


def derive_spec(
    cfg: StudyConfig, source: Source, number: int, attrs: Mapping[str, Any]
) -> TrialSpec:
    """What trial ``number`` trains: its values asked of ``source``, and the seed it recorded in
    ``attrs`` (a re-run of an interrupted trial, or a heartbeat retry, carries its original's),
    else the study's seed for that number. The objective and ``hpsearch train`` both use it."""
    values = sample_values(cfg.search, source)
    seed = int(attrs.get(SEED_ATTR, trial_seed(cfg.search.seed, number)))
    return to_trial_spec(values, cfg, seed)


def fit_in_memory(
    spec: TrialSpec,
    data: DeviceData,
    on_epoch: Callable[[EpochMetrics], None] | None,
    eval_batch_size: int,
) -> FitResult:
    """``fit``, with running out of GPU or host memory turned into :class:`TrialOutOfMemory`
    (its message: "out of GPU memory: <what torch said>") after the memory the failed training
    held is given back. NonFiniteLoss and every other error pass through."""
    oom_reason = ""
    free = None
    try:
        return fit(spec, data, on_epoch, eval_batch_size)
    except (MemoryError, RuntimeError) as e:  # torch's errors are RuntimeErrors
        where = out_of_memory_where(e)
        if where is None:
            raise
        oom_reason = f"out of {where} memory: {first_line(e)}"
        free = free_device_bytes(data.device)  # how full the card was, this trial included
    # Recover only here, after the except block: inside it the exception's traceback still
    # holds fit()'s frames (model, optimizer state, activations), so nothing would be freed
    # (pytorch issue 18853).
    free_memory(data.device)
    raise TrialOutOfMemory(oom_reason, free)


def predicted_oom(
    trials: list[optuna.trial.FrozenTrial],
    n_params: int,
    batch_size: int,
    device: str,
    activations: int,
) -> optuna.trial.FrozenTrial | None:
    """A trial on the same device that ran out of memory with the device to itself although this
    one is no smaller in anything that takes memory (parameters, batch size, activations per
    image), or None. Such a trial would fail the same way. One that ran out beside other trials
    (``oom_alone`` false: crowded out, and not retried alone) says nothing of its size. A failed
    trial recorded without ``oom_alone`` (older hpsearch) counts as alone, and one without
    ``activations`` is compared on parameters and batch size only."""
    for t in trials:
        a = t.user_attrs
        if (
            a.get(OOM_ATTR)
            and a.get(OOM_ALONE_ATTR, True)
            and a.get(DEVICE_ATTR) == device
            and n_params >= int(a.get(N_PARAMS_ATTR, n_params + 1))
            and batch_size >= int(a.get(BATCH_SIZE_ATTR, batch_size + 1))
            and activations >= int(a.get(ACTIVATIONS_ATTR, 0))
        ):
            return t
    return None


def trial_source(trial: optuna.Trial) -> Source:
    """Ask an Optuna trial for each searched parameter."""

    def source(name: str, spec: Plain) -> Scalar:
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
    for pkg in ("torch", "optuna"):
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


def make_keeper(cfg: StudyConfig, data: DeviceData, artifacts: Path) -> CheckpointKeeper | None:
    """The keeper of the best ``search.keep_checkpoints`` trials' models in ``artifacts`` (None
    when the study keeps none). Pass it to :func:`make_objective`, and its ``settle`` to
    ``study.optimize``'s callbacks."""
    if cfg.search.keep_checkpoints <= 0:
        return None
    return CheckpointKeeper(
        artifacts, cfg.search.keep_checkpoints, cfg, data.classes, data.image_size, versions()
    )


def make_objective(
    cfg: StudyConfig,
    data: DeviceData,
    on_epoch: EpochHook | None = None,
    keeper: CheckpointKeeper | None = None,
    command: str = "",
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """The objective for ``study.optimize``: returns the final epoch's validation accuracy.

    With a ``keeper`` (:func:`make_keeper`), a trial that finishes among the best
    ``search.keep_checkpoints`` keeps its trained model as an Optuna artifact. ``command``, the
    command line that runs the search, is recorded on each trial (URL passwords masked).

    On a GPU that the launcher shares among K > 1 workers (``HPSEARCH_GPU_SHARERS``), each trial
    trains holding the GPU's lock shared (:mod:`hpsearch.search.gpu_share`); a trial that runs out
    of memory there is trained again, once, with the GPU to itself (the lock exclusive) before
    anything is concluded from it.
    """
    static_attrs: dict[str, Any] = {
        DEVICE_ATTR: device_name(data.device),
        VERSIONS_ATTR: versions(),
        CONFIG_ATTR: cfg.to_dict(),
        COMMAND_ATTR: mask_secrets(command)[:500],
        WORKER_ATTR: f"{platform.node()}:{os.getpid()}",
    }
    share = device_share(data.device)
    gpu_lock = GpuLock(share.gpu_id) if share.locks and share.gpu_id is not None else None

    two_objectives = len(cfg.search.objectives) > 1

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return run(trial)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the trial is re-run on resume
            trial.set_user_attr(FAIL_REASON_ATTR, f"{STOPPED_PREFIX}{type(e).__name__}")
            raise

    def reporter(trial: optuna.Trial) -> Callable[[EpochMetrics], None]:
        """The per-epoch callback of one training of ``trial``: each epoch's value and
        attributes in one database transaction, then the pruner's verdict."""
        seen = 0.0
        train_s = 0.0
        epoch_s = 0.0
        curve: list[float] = []  # with two objectives, Optuna keeps no intermediate values

        def report(m: EpochMetrics) -> None:
            nonlocal seen, train_s, epoch_s
            seen += m.train_images_per_s * m.train_seconds
            train_s += m.train_seconds
            epoch_s += m.epoch_seconds
            attrs: dict[str, Any] = {
                EPOCHS_RUN_ATTR: m.epoch,
                TRAIN_IMAGES_PER_S_ATTR: round(seen / train_s, 1),
                EPOCH_SECONDS_ATTR: round(epoch_s / m.epoch, 3),
                TRAIN_LOSS_ATTR: m.train_loss,
                VAL_LOSS_ATTR: m.val_loss,
            }
            if two_objectives:
                curve.append(m.val_accuracy)
                record_on_trial(trial, {VAL_ACCURACY_BY_EPOCH_ATTR: list(curve), **attrs})
            else:
                record_on_trial(trial, attrs, step=m.epoch, value=m.val_accuracy)
            if on_epoch is not None:
                on_epoch(trial, m)
            raise_if_pending()  # a Ctrl-C that landed in one of the writes above
            if not two_objectives and m.epoch < m.epochs and trial.should_prune():
                reason = f"pruned by the {cfg.search.pruner.name} pruner after epoch {m.epoch}"
                trial.set_user_attr(PRUNED_REASON_ATTR, reason)
                raise optuna.TrialPruned(reason)

        return report

    def attempt(trial: optuna.Trial, spec: TrialSpec, alone: bool) -> FitResult:
        """One training of the trial, holding the GPU's lock when it has one: shared beside the
        other workers, or exclusive (``alone``)."""
        report = reporter(trial)
        if gpu_lock is None:
            return fit_in_memory(spec, data, report, cfg.train.eval_batch_size)
        try:
            if alone:
                gpu_lock.take_alone()
            else:
                gpu_lock.share()
            return fit_in_memory(spec, data, report, cfg.train.eval_batch_size)
        except BaseException as e:
            # a pruned or failed training's frames hold its tensors: let them go before the
            # memory is given back below
            traceback.clear_frames(e.__traceback__)
            raise
        finally:
            free_memory(data.device)  # the cache back to the driver before the others go on
            gpu_lock.release()

    def train(trial: optuna.Trial, spec: TrialSpec, events: list[dict[str, Any]]) -> FitResult:
        """Train the trial; one that runs out of memory beside other trials is trained again,
        once, with the GPU to itself. Each out-of-memory is added to ``events``."""
        try:
            return attempt(trial, spec, alone=False)
        except TrialOutOfMemory as e:
            events.append(oom_event(share.sharers, share.sharers == 1, e.free_bytes))
            if gpu_lock is None:
                raise
            reason = str(e)
        # Crowded out, perhaps: the size of the trial is not to blame until it fails alone.
        _log.warning(
            "trial %d ran %s beside other trials (%d workers share this GPU); it trains again "
            "with the GPU to itself once their running trials end",
            trial.number,
            reason,
            share.sharers,
        )
        record_on_trial(trial, {RETRIED_ALONE_ATTR: True, OOM_EVENTS_ATTR: list(events)})
        forget_intermediate_values(trial)
        try:
            return attempt(trial, spec, alone=True)
        except TrialOutOfMemory as e:
            events.append(oom_event(share.sharers, True, e.free_bytes))
            raise

    def run(trial: optuna.Trial) -> float | tuple[float, float]:
        spec = derive_spec(cfg, trial_source(trial), trial.number, trial.user_attrs)
        seed = spec.seed
        n_params = param_count(spec.arch, len(data.classes), data.image_size)
        activations = activation_count(spec.arch, data.image_size)
        record_on_trial(
            trial,
            {
                SEED_ATTR: seed,
                N_PARAMS_ATTR: n_params,
                BATCH_SIZE_ATTR: spec.batch_size,
                ACTIVATIONS_ATTR: activations,
                **static_attrs,
            },
        )
        limits = cfg.search.constraints
        if limits.max_params is not None:
            # recorded with Optuna's constraint support, so the sampler learns to avoid the
            # region; a model over the budget is known before it trains, so it never does
            # (a heartbeat retry copies its original's system attributes, this one included)
            if "max_params" not in trial.constraints:
                trial.set_constraint("max_params", n_params - limits.max_params)
            if n_params > limits.max_params:
                reason = (
                    f"over the deployment budget: {n_params:,} parameters > "
                    f"search.constraints.max_params {limits.max_params:,}"
                )
                trial.set_user_attr(PRUNED_REASON_ATTR, reason)
                raise optuna.TrialPruned(reason)
        # Samplers never learn from FAIL trials (TPE ignores them), so a trial that is at least as
        # large as one that ran out of memory here is pruned at once: PRUNED with no value ranks
        # below every other trial, which steers TPE away from that corner of the space.
        failed = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        twin = predicted_oom(
            failed, n_params, spec.batch_size, static_attrs[DEVICE_ATTR], activations
        )
        if twin is not None:
            reason = (
                f"predicted out of memory: trial {twin.number} ran out of memory with no more "
                f"parameters ({twin.user_attrs[N_PARAMS_ATTR]:,}), no bigger batch "
                f"({twin.user_attrs[BATCH_SIZE_ATTR]}) and no more activations per image"
            )
            trial.set_user_attr(PRUNED_REASON_ATTR, reason)
            raise optuna.TrialPruned(reason)
        events: list[dict[str, Any]] = []
        try:
            result = train(trial, spec, events)
        except NonFiniteLoss as e:
            trial.set_user_attr(PRUNED_REASON_ATTR, str(e))
            raise optuna.TrialPruned(str(e)) from None
        except TrialOutOfMemory as e:
            record_on_trial(
                trial,
                {
                    OOM_ATTR: True,
                    FAIL_REASON_ATTR: str(e),
                    OOM_ALONE_ATTR: bool(events[-1]["alone"]),
                    OOM_EVENTS_ATTR: list(events),
                },
            )
            raise
        feasible = True
        ms = None
        if limits.max_latency_ms is not None or "latency_ms" in cfg.search.objectives:
            on = torch.device("cpu") if limits.latency_device == "cpu" else data.device
            ms = latency_ms(result.model, data.image_size, on)
            trial.set_user_attr(LATENCY_MS_ATTR, round(ms, 4))
            trial.set_user_attr(LATENCY_DEVICE_ATTR, device_name(on))
        if limits.max_latency_ms is not None and ms is not None:
            trial.set_constraint("max_latency_ms", ms - limits.max_latency_ms)
            feasible = ms <= limits.max_latency_ms
        out: float | tuple[float, float] = result.val_accuracy
        if two_objectives:
            second = ms if cfg.search.objectives[1] == "latency_ms" else n_params
            assert second is not None  # measured above when it is an objective
            out = (result.val_accuracy, float(second))
        if keeper is not None and feasible:  # a model over the budget is not one to deploy
            keeper.offer(trial, result.model, spec.arch, out)
        return out

    return objective
