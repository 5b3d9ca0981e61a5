"""Storage overhead of the worker loop: many processes, a trivial objective, PostgreSQL vs SQLite.

Each worker process runs hpsearch's own claim loop (``run_until_budget``: claim lock, count, ask)
with an objective that only reports 5 intermediate values and sets 5 user attributes, then tells.
Per trial it measures the storage time (claim + ask, reports, tell); the study is prefilled with
1k or 10k finished trials first, since Optuna's queries grow with the study. It also checks that
exactly the budget finished, with no duplicate trial number and nothing left RUNNING.

Columns: trials/s across all workers (first claim to last tell, process start-up excluded);
median and p95 per-trial storage overhead (wall time of claim + ask, reports and tell); the
median part of it spent waiting for the claim lock; the median CPU time the worker process itself
spent per trial (Optuna + SQLAlchemy + driver), which tells whether the wall time is the database
or CPU contention between workers. One study per backend and size is prefilled once and each
worker count raises its budget in turn.

    python bench/storage.py --workers 1,4,16 --prefill 1000,10000 --per-worker 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import psycopg

from hpsearch.search.workers import run_until_budget
from hpsearch.storage.claims import claim_lock
from hpsearch.storage.state import TARGET_ATTR, count_states
from hpsearch.storage.urls import open_storage

REPORTS = 5


class TimedLock:
    """Wraps the claim lock and remembers when the current claim began."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started = 0.0
        self.acquired = 0.0
        self.cpu_started = 0.0

    def acquire(self) -> object:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        got = self.inner.acquire()
        self.acquired = time.perf_counter()
        return got

    def release(self) -> None:
        self.inner.release()


def worker(url: str, name: str, out: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=10)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    lock = TimedLock(claim_lock(storage, name))
    # per trial: (overhead, lock wait, CPU, claim began, told) with epoch seconds for the last two
    timings: list[tuple[float, float, float, float, float]] = []
    marks: dict[str, float] = {}

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        marks["claim"] = t0 - lock.started
        x = trial.suggest_float("x", -1, 1)
        for step in range(1, REPORTS + 1):
            trial.report(x * step, step)
            trial.set_user_attr(f"a{step}", step)
        marks["reports"] = time.perf_counter() - t0
        marks["end"] = time.perf_counter()
        return x

    def after(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        tell = time.perf_counter() - marks["end"]
        cpu = time.process_time() - lock.cpu_started
        overhead = marks["claim"] + marks["reports"] + tell
        now = time.time()
        began = now - (time.perf_counter() - lock.started)
        timings.append((overhead, lock.acquired - lock.started, cpu, began, now))

    run_until_budget(study, objective, lock, callbacks=[after], poll_seconds=0.2)
    out.put(timings)


def prefill(url: str, name: str, n: int) -> None:
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(-1, 1)}
    trials = [
        optuna.trial.create_trial(
            params={"x": 0.1},
            distributions=dist,
            value=0.1,
            intermediate_values={s: 0.1 for s in range(1, REPORTS + 1)},
        )
        for _ in range(n)
    ]
    study.add_trials(trials)


def one(url: str, name: str, workers: int, per_worker: int) -> dict[str, Any]:
    """Raise the study's budget by ``workers * per_worker`` trials and let the workers run them."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    before = count_states(study)[0]
    goal = before + workers * per_worker
    study.set_user_attr(TARGET_ATTR, goal)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    rows = [x for _ in procs for x in q.get()]
    timings = [r[0] for r in rows]
    wall = max(r[4] for r in rows) - min(r[3] for r in rows)  # first claim to last tell
    for p in procs:
        p.join()
    finished, running = count_states(study)
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    ok = finished == goal and running == 0 and len(numbers) == len(set(numbers)) == goal
    q95 = statistics.quantiles(timings, n=20)
    return {
        "trials/s": len(timings) / wall,
        "median_ms": 1000 * statistics.median(timings),
        "p95_ms": 1000 * q95[18],
        "lock_ms": 1000 * statistics.median(r[1] for r in rows),
        "cpu_ms": 1000 * statistics.median(r[2] for r in rows),
        "exact": ok,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", default="1,4,16,32")
    p.add_argument("--prefill", default="1000,10000")
    p.add_argument("--per-worker", type=int, default=20, help="trials each worker runs")
    p.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin URL; a scratch database is made and dropped",
    )
    p.add_argument("--backends", default="postgresql,sqlite")
    args = p.parse_args()
    db = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    base = args.pg.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"postgresql": f"{base}/{db}", "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        if "postgresql" in args.backends:
            with psycopg.connect(args.pg, autocommit=True) as con:
                con.execute(f'CREATE DATABASE "{db}"')
        try:
            print(
                f"{'backend':10s} {'trials':>7s} {'workers':>7s} {'trials/s':>9s} "
                f"{'median ms':>9s} {'p95 ms':>8s} {'lock ms':>8s} {'CPU ms':>7s}  exact"
            )
            for backend in args.backends.split(","):
                for n_prefill in (int(x) for x in args.prefill.split(",")):
                    name = f"bench-{uuid.uuid4().hex[:8]}"
                    prefill(urls[backend], name, n_prefill)
                    for w in (int(x) for x in args.workers.split(",")):
                        r = one(urls[backend], name, w, args.per_worker)
                        print(
                            f"{backend:10s} {n_prefill:7d} {w:7d} {r['trials/s']:9.1f} "
                            f"{r['median_ms']:9.1f} {r['p95_ms']:8.1f} {r['lock_ms']:8.1f} "
                            f"{r['cpu_ms']:7.1f}  {r['exact']}",
                            flush=True,
                        )
        finally:
            if "postgresql" in args.backends:
                with psycopg.connect(args.pg, autocommit=True) as con:
                    con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
