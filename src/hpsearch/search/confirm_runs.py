"""One ``hpsearch confirm`` worker: claim a job, train it with its seed, evaluate it, and record
the run in its trial's attributes as soon as it ends (keeping the model if it is the trial's best
run so far), until no job is left or its deadline (``confirm --timeout``) has passed: a run
going at the deadline finishes, none starts after it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from hpsearch.config import StudyConfig
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.determinism import before_cuda
from hpsearch.engine.devices import training_device
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import EpochMetrics, NonFiniteLoss, fit
from hpsearch.errors import HpsearchError, first_line
from hpsearch.results.confirmed import summarize
from hpsearch.results.timing import spent_and_left
from hpsearch.search.confirm_jobs import Job, TestSet, claim, pending, release, setup
from hpsearch.space import params_source, sample_values, to_trial_spec
from hpsearch.storage import optuna_private
from hpsearch.storage.checkpoint import (
    checkpoint_blob,
    checkpoint_from_blob,
    remove_artifact,
    save_blob,
)
from hpsearch.storage.claims import (
    claim_lock,
    held,
)
from hpsearch.storage.state import (
    CONFIRM_CHECKPOINT,
    CONFIRM_RUNS,
    read_attrs,
    winner_checkpoint,
    write_attrs,
)


class Worker:
    """Claims jobs, trains them, records each run as it ends."""

    def __init__(
        self,
        study: optuna.Study,
        jobs: Sequence[Job],
        store: Path,
        test: TestSet | None,
        say: Callable[[str], None],
        workers: int = 1,
        deadline: float | None = None,
    ) -> None:
        self.study = study
        self.jobs = list(jobs)
        self.store = store
        self.test = test
        self.say = say
        self.workers = workers
        self.deadline = deadline  # seconds since the epoch: no job is claimed after it
        self.lock = claim_lock(optuna_private.storage_of(study), f"{study.study_name}:confirm")
        self.data: dict[tuple[DataConfig, str], DeviceData] = {}
        self.started = time.monotonic()
        self.run_seconds: list[float] = []

    def _data(self, cfg: StudyConfig) -> DeviceData:
        before_cuda(cfg.train.deterministic)  # before the data goes to the GPU
        device = training_device(cfg.train.device)
        key = (cfg.data, str(device))
        if key not in self.data:
            self.data.clear()  # one data set on the device at a time
            self.data[key] = load_data(cfg.data, device)
        return self.data[key]

    def work(self) -> int:
        """Run jobs until none is left or the deadline has passed; returns how many this worker
        ran."""
        ran = 0
        while True:
            if self.deadline is not None and time.time() >= self.deadline:
                return ran
            job, recorded = claim(self.study, self.jobs, self.lock)
            if job is None:
                return ran
            try:
                self._run(job, recorded)
            finally:
                release(self.study, job, self.lock)
            ran += 1

    def _head(self, recorded: int) -> str:
        spent = time.monotonic() - self.started
        left = None
        if self.run_seconds and recorded < len(self.jobs):
            mean = statistics.fmean(self.run_seconds)
            left = max(len(self.jobs) - recorded, 0) * mean / max(self.workers, 1)
        times = spent_and_left(spent, left, self.deadline, time.time(), "confirm run")
        return f"[confirm {recorded}/{len(self.jobs)} done | {times}]"

    def _run(self, job: Job, recorded: int) -> None:
        t, cfg = job.trial, job.cfg
        data = self._data(cfg)
        values = sample_values(cfg.search, params_source(t.params, f"trial {t.number}"))
        spec = to_trial_spec(values, cfg, job.seed)
        what = f"trial {t.number} run {job.run + 1} (seed {job.seed})"

        def show(m: EpochMetrics) -> None:
            self.say(
                f"{self._head(recorded)} {what} epoch {m.epoch}/{m.epochs}: "
                f"loss {m.train_loss:.4f} val_acc {m.val_accuracy:.4f} "
                f"({m.train_images_per_s:.0f} img/s, {m.epoch_seconds:.1f}s)"
            )

        from hpsearch.search.objective import device_name, is_out_of_memory, versions

        t0 = time.monotonic()
        entry: dict[str, Any] = {"run": job.run, "seed": job.seed, "setup": setup(cfg)}
        try:
            result = fit(spec, data, show, cfg.train.eval_batch_size)
        except NonFiniteLoss as e:
            entry.update(val_accuracy=None, diverged=str(e))
            result = None
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise HpsearchError(f"{what} ran out of memory: {first_line(e)}") from None
        artifact = None
        if result is not None:
            entry["val_accuracy"] = result.val_accuracy
            blob = checkpoint_blob(
                t.number,
                self.study.study_name,
                result.val_accuracy,
                t.params,
                spec.arch,
                result.model,
                data.classes,
                data.image_size,
                cfg.to_dict(),
                versions(),
            )
            blob["confirm"] = {"run": job.run, "seed": job.seed}
            if self.test is not None:
                from hpsearch.results.inference import evaluate

                ev = evaluate(checkpoint_from_blob(blob, self.store), self.test.path, data.device)
                entry.update(
                    test_accuracy=ev.accuracy, test_images=ev.total, test_data=str(self.test.path)
                )
            artifact = save_blob(self.store, blob, f"trial-{t.number}-confirm-{job.run}.pt")
            # the provenance serve --confirmed shows for this run's model (not the trial's)
            entry.update(
                finished=datetime.now().astimezone().isoformat(timespec="seconds"),
                device=device_name(data.device),
                worker=f"{platform.node()}:{os.getpid()}",
            )
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.run_seconds.append(entry["seconds"])
        self._record(job, entry, artifact)
        recorded = len(self.jobs) - len(pending(self.study, self.jobs))
        shown = (
            f"val_acc {entry['val_accuracy']:.4f}"
            if entry.get("val_accuracy") is not None
            else f"diverged ({entry.get('diverged')})"
        )
        if entry.get("test_accuracy") is not None:
            shown += f", test accuracy {entry['test_accuracy']:.4f}"
        self.say(f"{self._head(recorded)} {what} finished: {shown}")

    def _record(self, job: Job, entry: dict[str, Any], artifact: str | None) -> None:
        """Append the run to the trial's list and update its means, under the lock; keep the
        model if it is the trial's best run so far."""
        t = job.trial
        drop = None
        with held(self.lock):
            now = read_attrs(self.study, t, [CONFIRM_RUNS, CONFIRM_CHECKPOINT])
            runs = [r for r in now.get(CONFIRM_RUNS) or [] if isinstance(r, dict)]
            if any(r.get("seed") == job.seed for r in runs):
                drop = artifact  # recorded already (two confirms at once): keep the first
            else:
                attrs: dict[str, Any] = {CONFIRM_RUNS: [*runs, entry], **summarize([*runs, entry])}
                best = max(
                    (r for r in runs if r.get("val_accuracy") is not None and r.get("kept")),
                    key=lambda r: float(r["val_accuracy"]),
                    default=None,
                )
                old = now.get(CONFIRM_CHECKPOINT)
                if artifact is not None and (
                    best is None
                    or float(entry["val_accuracy"]) > float(best["val_accuracy"])
                    or not isinstance(old, str)
                ):
                    entry["kept"] = True
                    for r in runs:
                        r.pop("kept", None)
                    attrs[CONFIRM_RUNS] = [*runs, entry]
                    attrs[CONFIRM_CHECKPOINT] = artifact
                    drop = old if isinstance(old, str) else None
                else:
                    drop = artifact
                write_attrs(self.study, t, attrs)
        if drop is not None and drop != winner_checkpoint(self.study):
            # the recorded winner's file stays until confirm records the next winner: a
            # confirm stopped between the two must leave serve/export --confirmed working
            remove_artifact(self.store, drop)
