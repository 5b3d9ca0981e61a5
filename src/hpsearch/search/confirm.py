"""``hpsearch confirm``: retrain the K best trials with new seeds, so that the winner is the best
configuration on average rather than the luckiest single run.

Each (trial, run) job trains the trial's parameters for its full epochs with a seed derived from
the trial's own seed and the run index (reproducible, never the trial's own). A finished run is
recorded at once in the trial's user attributes (``confirm_runs``, the means and spreads: see
``study_state.CONFIRM_*``), so an interrupted confirm resumes where it stopped and ``best``, the
dashboard and ``trials --csv`` show the results. Optuna does not let its API change a finished
trial, so these attributes are written to Optuna's table of trial user attributes directly
(by ``optuna_private``, under the claim lock, one transaction per run). Each trial keeps the
model of its best run in the artifact store (``confirm_checkpoint``); the study's ``confirmed``
attribute names the winner (the highest mean) and its checkpoint.

Several workers (``--workers``, ``--gpus``) take jobs one at a time: a job is claimed in the
study's ``confirm_claims`` attribute under the claim lock, and released when its run is recorded
or its worker is stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from hpsearch.config import Override, StudyConfig, config_from_dict
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.images import list_split
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import EpochMetrics, NonFiniteLoss, fit, resolve_device
from hpsearch.errors import ConfigError, DataError, HpsearchError, StorageError, first_line
from hpsearch.files import what_is
from hpsearch.results.timing import duration
from hpsearch.space import params_source, sample_values, to_trial_spec, trial_seed
from hpsearch.storage import optuna_private
from hpsearch.storage.checkpoint import (
    checkpoint_blob,
    checkpoint_from_blob,
    remove_artifact,
    save_blob,
)
from hpsearch.storage.claims import (
    Lock,
    claim_key,
    claim_lock,
    clear_claims,
    held,
    release_key,
)
from hpsearch.storage.state import (
    CLAIMS_ATTR,
    CONFIG_ATTR,
    CONFIRM_CHECKPOINT,
    CONFIRM_N,
    CONFIRM_RUNS,
    CONFIRM_TEST_DATA,
    CONFIRM_TEST_MEAN,
    CONFIRM_TEST_N,
    CONFIRM_TEST_STD,
    CONFIRM_VAL_MEAN,
    CONFIRM_VAL_STD,
    CONFIRMED_ATTR,
    SEED_ATTR,
    read_attrs,
    write_attrs,
)


def confirm_seed(seed: int, run: int) -> int:
    """The seed of confirm run ``run`` (0-based) of a trial whose own seed is ``seed``:
    reproducible, and never the trial's own seed."""
    digest = hashlib.sha256(f"hpsearch-confirm:{seed}:{run}".encode()).digest()
    derived = int.from_bytes(digest[:4], "big") % (2**31 - 1)
    return derived if derived != seed else (derived + 1) % (2**31 - 1)


def own_seed(t: FrozenTrial, cfg: StudyConfig) -> int:
    return int(t.user_attrs.get(SEED_ATTR, trial_seed(cfg.search.seed, t.number)))


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


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The aggregate attributes of a trial's runs (a diverged run has no accuracy and is left
    out of the means)."""
    val = [float(r["val_accuracy"]) for r in runs if r.get("val_accuracy") is not None]
    tested = [r for r in runs if r.get("test_accuracy") is not None]
    test_dir = tested[-1].get("test_data") if tested else None  # the latest --data
    test = [float(r["test_accuracy"]) for r in tested if r.get("test_data") == test_dir]

    def std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    return {
        CONFIRM_N: len(val),
        CONFIRM_VAL_MEAN: statistics.fmean(val) if val else None,
        CONFIRM_VAL_STD: std(val) if val else None,
        CONFIRM_TEST_MEAN: statistics.fmean(test) if test else None,
        CONFIRM_TEST_STD: std(test) if test else None,
        CONFIRM_TEST_N: len(test),
        CONFIRM_TEST_DATA: test_dir,
    }


# --- claiming jobs -----------------------------------------------------------------------------


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


# --- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSet:
    """``--data``: the directory, checked before any training."""

    path: Path


def check_test_dir(data_dir: Path, classes: Sequence[str]) -> TestSet:
    """The test directory's layout and classes (a subset of the training classes)."""
    from hpsearch.results.inference import imagefolder_split

    split = imagefolder_split(data_dir.expanduser().resolve())
    try:
        found, _ = list_split(split)
    except DataError as e:
        raise DataError(
            f"--data {data_dir}: not an ImageFolder directory (DIR/<class>/<image> or "
            f"DIR/val/<class>/<image>): {e}"
        ) from None
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(
            f"--data {data_dir}: class folder(s) {', '.join(unknown)} are not classes of the "
            f"study ({', '.join(classes)})"
        )
    return TestSet(data_dir.expanduser().resolve())


def train_classes(cfg: StudyConfig) -> tuple[str, ...]:
    """The class names of the study's training split (listing only, no decoding)."""
    if not cfg.data.root.is_dir():
        raise DataError(
            f"data root {cfg.data.root} {what_is(cfg.data.root, 'a directory')} (set --set "
            "data.root=DIR to the "
            "ImageFolder directory the search trained on)"
        )
    classes, _ = list_split(cfg.data.root / "train", cfg.data.max_per_class)
    return classes


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
    ) -> None:
        self.study = study
        self.jobs = list(jobs)
        self.store = store
        self.test = test
        self.say = say
        self.workers = workers
        self.lock = claim_lock(optuna_private.storage_of(study), f"{study.study_name}:confirm")
        self.data: dict[tuple[DataConfig, str], DeviceData] = {}
        self.started = time.monotonic()
        self.run_seconds: list[float] = []

    def _data(self, cfg: StudyConfig) -> DeviceData:
        device = resolve_device(cfg.train.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device: {cfg.train.device} requested but no CUDA device")
        key = (cfg.data, str(device))
        if key not in self.data:
            self.data.clear()  # one data set on the device at a time
            self.data[key] = load_data(cfg.data, device)
        return self.data[key]

    def work(self) -> int:
        """Run jobs until none is left; returns how many this worker ran."""
        ran = 0
        while True:
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
        text = f"[confirm {recorded}/{len(self.jobs)} done | {duration(spent)}"
        if self.run_seconds and recorded < len(self.jobs):
            mean = statistics.fmean(self.run_seconds)
            left = max(len(self.jobs) - recorded, 0) * mean / max(self.workers, 1)
            text += f", ~{duration(left)} left"
        return text + "]"

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

        from hpsearch.search.objective import is_out_of_memory, versions

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
        if drop is not None:
            remove_artifact(self.store, drop)


# --- the result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    trial: FrozenTrial
    attrs: dict[str, Any]

    @property
    def mean(self) -> float | None:
        v = self.attrs.get(CONFIRM_VAL_MEAN)
        return float(v) if v is not None else None


def results(study: optuna.Study, top: Sequence[FrozenTrial]) -> list[Row]:
    keys = [CONFIRM_RUNS, CONFIRM_VAL_MEAN, CONFIRM_VAL_STD, CONFIRM_N, CONFIRM_TEST_MEAN]
    keys += [CONFIRM_TEST_STD, CONFIRM_TEST_N, CONFIRM_TEST_DATA, CONFIRM_CHECKPOINT]
    return [Row(t, read_attrs(study, t, keys)) for t in top]


def pick_winner(rows: Sequence[Row]) -> Row | None:
    """The highest confirmed mean; on a tie, the better search value (the order of ``rows``)."""
    scored = [(r.mean, -i, r) for i, r in enumerate(rows) if r.mean is not None]
    if not scored:
        return None
    return max(scored, key=lambda x: (x[0], x[1]))[2]


def record_winner(study: optuna.Study, winner: Row, top: int, seeds: int) -> dict[str, Any]:
    a = winner.attrs
    kept: dict[str, Any] = next((r for r in a.get(CONFIRM_RUNS) or [] if r.get("kept")), {})
    doc = {
        "trial": winner.trial.number,
        "val_accuracy_mean": a.get(CONFIRM_VAL_MEAN),
        "val_accuracy_std": a.get(CONFIRM_VAL_STD),
        "n": a.get(CONFIRM_N),
        "test_accuracy_mean": a.get(CONFIRM_TEST_MEAN),
        "test_accuracy_std": a.get(CONFIRM_TEST_STD),
        "test_n": a.get(CONFIRM_TEST_N),
        "test_data": a.get(CONFIRM_TEST_DATA),
        "checkpoint": a.get(CONFIRM_CHECKPOINT),
        "seed": kept.get("seed"),
        "search_val_accuracy": winner.trial.values[0],
        "top": top,
        "seeds": seeds,
    }
    study.set_user_attr(CONFIRMED_ATTR, doc)
    return doc


def table(rows: Sequence[Row], winner: Row | None, seeds: int) -> str:
    """The end-of-confirm table, one row per trial, best search value first."""
    has_test = any(r.attrs.get(CONFIRM_TEST_MEAN) is not None for r in rows)
    head = f"{'trial':>5}  {'search val':>10}  {'confirmed val (mean ± std)':>26}  {'runs':>5}"
    if has_test:
        head += f"  {'test (mean ± std)':>17}"
    lines = [head]
    for r in rows:
        a = r.attrs

        def pm(mean: Any, std: Any) -> str:
            return "-" if mean is None else f"{float(mean):.4f} ± {float(std or 0.0):.4f}"

        runs = [x for x in a.get(CONFIRM_RUNS) or [] if isinstance(x, dict)]
        diverged = sum(1 for x in runs if x.get("val_accuracy") is None)
        line = (
            f"{r.trial.number:>5}  {r.trial.values[0] if r.trial.values else 0.0:>10.4f}  "
            f"{pm(a.get(CONFIRM_VAL_MEAN), a.get(CONFIRM_VAL_STD)):>26}  "
            f"{f'{len(runs)}/{seeds}':>5}"
        )
        if has_test:
            line += f"  {pm(a.get(CONFIRM_TEST_MEAN), a.get(CONFIRM_TEST_STD)):>17}"
        if diverged:
            line += f"  ({diverged} diverged)"
        if winner is not None and r.trial.number == winner.trial.number:
            line += "  <- winner"
        lines.append(line)
    return "\n".join(lines)


def spread_note(rows: Sequence[Row]) -> str | None:
    """A note when the winner's lead is within the noise (less than one std of either)."""
    ranked = sorted((r for r in rows if r.mean is not None), key=lambda r: -(r.mean or 0.0))
    if len(ranked) < 2:
        return None
    a, b = ranked[0], ranked[1]
    gap = (a.mean or 0.0) - (b.mean or 0.0)
    noise = max(float(a.attrs.get(CONFIRM_VAL_STD) or 0), float(b.attrs.get(CONFIRM_VAL_STD) or 0))
    if math.isfinite(gap) and gap < noise:
        return (
            f"note: trial {a.trial.number} leads trial {b.trial.number} by {gap:.4f}, less than "
            f"one standard deviation ({noise:.4f}); more --seeds would tell them apart"
        )
    return None


# --- the command -------------------------------------------------------------------------------


def cmd_confirm(args: Any) -> int:
    """``hpsearch confirm``: see the module docstring. ``args`` is the parsed command line."""
    from hpsearch.config import load_study, parse_set
    from hpsearch.results.read import open_existing, pick_trial, ranked, study_name
    from hpsearch.search.launcher import launch, plan_slots
    from hpsearch.storage.urls import artifacts_dir, mask_url, storage_url

    overrides = [parse_set(item) for item in args.overrides]
    url = storage_url(args.storage)
    name = study_name(args.study, args.study_name)
    study = open_existing(url, name)
    store = artifacts_dir(url, args.artifacts)
    completed = ranked(study)
    if args.worker_trials is not None:
        top = [pick_trial(study, int(n)) for n in args.worker_trials.split(",")]
    else:
        top = completed[: args.top]
        if not top:
            n = len(study.get_trials(deepcopy=False))
            raise StorageError(
                f"study {name!r} has no completed trial to confirm ({n} trial"
                f"{'' if n == 1 else 's'} in all)"
            )
    fallback: list[StudyConfig] = []

    def config_of(t: FrozenTrial) -> StudyConfig:
        if not fallback and not isinstance(t.user_attrs.get(CONFIG_ATTR), dict):
            fallback.append(load_study(args.study, overrides))
        return trial_config(t, overrides, fallback[0] if fallback else None)

    configs = {t.number: config_of(t) for t in top}
    jobs = plan(top, configs, args.seeds)
    test = None
    if args.data is not None:
        test = check_test_dir(Path(args.data), train_classes(configs[top[0].number]))

    if args.worker_trials is not None:  # a worker started by the command below
        threads = os.environ.get("HPSEARCH_THREADS")
        if threads and threads.isdigit():
            torch.set_num_threads(int(threads))
        workers = os.environ.get("HPSEARCH_WORKERS", "1")
        Worker(study, jobs, store, test, _say, int(workers) if workers.isdigit() else 1).work()
        return 0

    check_setup(study, jobs)
    todo = pending(study, jobs)
    epochs = sorted({c.train.epochs for c in configs.values()})
    of = f"the {len(top)} best of {len(completed)} completed"
    if len(top) < args.top:
        of = f"all {len(completed)} completed trials; --top {args.top} asked for more"
    _say(
        f"confirm {name!r} in {mask_url(url)}: trials {', '.join(str(t.number) for t in top)} "
        f"({of}) x {args.seeds} seed{'s' if args.seeds != 1 else ''}, "
        f"{'/'.join(map(str, epochs))} epochs each; {len(jobs) - len(todo)} of {len(jobs)} runs "
        "recorded already" + (f"; test accuracy on {test.path}" if test is not None else "")
    )
    if todo:
        clear_job_claims(study)
        slots = plan_slots(args.workers, args.gpus, args.trials_per_gpu)
        if len(slots) == 1 and (slots[0].gpu is None or args.gpus is None):
            Worker(study, jobs, store, test, _say).work()
        else:
            child = [
                "--study",
                args.study,
                "--study-name",
                name,
                "--artifacts",
                str(store),
                "--seeds",
                str(args.seeds),
                "--worker-trials",
                ",".join(str(t.number) for t in top),
            ]
            if test is not None:
                child += ["--data", str(test.path)]
            for item in args.overrides:
                child += ["--set", item]
            codes = launch(slots, child, url, command="confirm")
            for slot, code in zip(slots, codes, strict=True):
                if code != 0:
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    _say(f"[w{slot.index}] ended with {how}")
    rows = results(study, top)
    missing = pending(study, jobs)
    winner = pick_winner(rows)
    _say(table(rows, winner, args.seeds))
    if missing:
        raise HpsearchError(
            f"{len(missing)} of {len(jobs)} confirm runs did not finish; run the same command "
            "again to resume"
        )
    if winner is None:
        raise HpsearchError("every confirm run diverged: no trial is confirmed")
    doc = record_winner(study, winner, len(top), args.seeds)
    test_text = ""
    if doc["test_accuracy_mean"] is not None:
        of_n = "" if doc["test_n"] == doc["n"] else f" over {doc['test_n']} of {doc['n']} runs"
        test_text = (
            f"; test accuracy {doc['test_accuracy_mean']:.4f} ± "
            f"{doc['test_accuracy_std']:.4f}{of_n} on {doc['test_data']}"
        )
    _say(
        f"winner: trial {doc['trial']}, confirmed val_accuracy {doc['val_accuracy_mean']:.4f} "
        f"± {doc['val_accuracy_std']:.4f} over {doc['n']} seeds{test_text} (the search "
        f"measured {winner.trial.values[0]:.4f} once)"
    )
    note = spread_note(rows)
    if note:
        _say(note)
    if isinstance(doc["checkpoint"], str):
        from hpsearch.results.read import confirmed_checkpoint_path

        _say(
            f"checkpoint: {confirmed_checkpoint_path(doc, store)} (its run with seed "
            f"{doc['seed']}); use it with --confirmed, e.g. hpsearch export --study {args.study} "
            "--confirmed --format torchscript --output model.pt"
        )
    return 0


def _say(text: str) -> None:
    print(text, flush=True)
