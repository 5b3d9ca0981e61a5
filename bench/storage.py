"""Storage overhead of the worker loop: many processes, a trivial objective, PostgreSQL vs SQLite.

Each worker process runs hpsearch's own claim loop (``run_until_budget``: claim lock, count, ask)
with an objective that trains nothing but writes what hpsearch's objective writes: the trial's
attributes once (``record_on_trial``), then 5 epochs each reporting a value with 5 attributes in
one transaction, then tells. Per trial it measures the storage time (claim + ask, reports, tell);
the study is prefilled with 1k or 10k finished trials first (copied with SQL from one trial that
Optuna made), since Optuna's queries grow with the study. It also checks that exactly the budget
finished, with no duplicate trial number and nothing left RUNNING.

Columns: trials/s across all workers (first claim to last tell, process start-up excluded);
median and p95 per-trial storage overhead (wall time of claim + ask, reports and tell); the
median part of it spent waiting for the claim lock; the median CPU time the worker process itself
spent per trial (Optuna + SQLAlchemy + driver), which tells whether the wall time is the database
or CPU contention between workers; on PostgreSQL, the most connections the workers held on the
server (``conns``, sampled from pg_stat_activity, the bench's own not counted). One study per
backend and size is prefilled once and each worker count raises its budget in turn.

Then, on the largest prefilled PostgreSQL study: the join, how long a new worker (a fresh
process, timed from after its imports) takes from opening the storage and the study (the study
names, the state index and the trial count, as ``hpsearch worker`` reads them) to its first
claimed trial; and the
read commands ``hpsearch status``, ``best``, ``trials --csv`` (and ``report`` with --report), each
run as the CLI runs them, in a subprocess: the wall time, and in brackets the command's own time
after Python's start and imports. Last, beside their targets: the join, the reads, and the line
``capacity: N finished trials/s``, the best PostgreSQL throughput measured.

    python bench/storage.py --workers 1,4,16 --prefill 1000,10000 --per-worker 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import psycopg
import sqlalchemy as sa

from hpsearch.search.workers import run_until_budget
from hpsearch.storage import optuna_private
from hpsearch.storage.claims import claim_lock
from hpsearch.storage.state import TARGET_ATTR, count_states, record_on_trial, trial_count
from hpsearch.storage.urls import open_storage

REPORTS = 5  # epochs per trial
# what hpsearch's objective records once per trial (seed, sizes, device, versions, config, ...)
TRIAL_ATTRS: dict[str, Any] = {
    "seed": 1,
    "n_params": 12345,
    "batch_size": 64,
    "activations": 4096,
    "device": "cpu:bench",
    "versions": {"python": "3", "hpsearch": "0", "torch": "2", "optuna": "4"},
    "config": {"search": {"trials": 1}, "train": {"epochs": REPORTS}},
    "command": "hpsearch run bench",
    "worker": "bench:0",
}
TARGET_RATE = 50.0  # finished trials/s on PostgreSQL, 2 cores, 16 workers
TARGET_JOIN = 1.0  # seconds to a new worker's first trial on a 10,000-trial study
TARGET_READ = 1.0  # seconds for status, best, trials on 10,000 trials
TARGET_REPORT = 10.0


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
    """Run the claim loop; put (timings, seconds to the first trial), or the error's last line
    (the database refused a connection, say), on ``out``."""
    try:
        run_worker(url, name, out)
    except Exception as e:
        out.put(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")


def run_worker(url: str, name: str, out: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    entered = time.perf_counter()
    storage = open_storage(url, heartbeat=10)
    # what hpsearch's open_study reads before loading a study it joins
    assert name in optuna.study.get_all_study_names(storage)
    optuna_private.ensure_state_index(storage.engine)
    trial_count(storage, storage.get_study_id_from_name(name))
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    lock = TimedLock(claim_lock(storage, name))
    # per trial: (overhead, lock wait, CPU, claim began, told) with epoch seconds for the last two
    timings: list[tuple[float, float, float, float, float]] = []
    marks: dict[str, float] = {}

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        marks.setdefault("joined", t0 - entered)
        marks["claim"] = t0 - lock.started
        x = trial.suggest_float("x", -1, 1)
        record_on_trial(trial, TRIAL_ATTRS)
        for step in range(1, REPORTS + 1):
            attrs = {"epochs_run": step, "train_images_per_s": 1000.0, "epoch_seconds": 0.1,
                     "train_loss": 0.5, "val_loss": 0.6}  # fmt: skip
            record_on_trial(trial, attrs, step=step, value=x * step)
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
    out.put((timings, marks.get("joined")))


def prefill(url: str, name: str, n: int) -> None:
    """A study of ``n`` finished trials: the first made by Optuna, the others copies of it made
    with SQL (Optuna adds trials one by one, about 50 ms each: 8 minutes for 10,000)."""
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(-1, 1)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.1},
            distributions=dist,
            value=0.1,
            intermediate_values={s: 0.1 for s in range(1, REPORTS + 1)},
            user_attrs=TRIAL_ATTRS,
        )
    )
    if n > 1:
        copy_first_trial(storage.engine, study._study_id, n - 1)


def copy_first_trial(engine: sa.Engine, study_id: int, copies: int) -> None:
    meta = sa.MetaData()
    meta.reflect(engine)
    trials = meta.tables["trials"]
    children = [t for t in meta.tables.values() if t.name != "trials" and "trial_id" in t.c]
    children = [t for t in children if t.name != "trial_heartbeats"]
    with engine.begin() as conn:
        first = conn.execute(sa.select(trials).where(trials.c.study_id == study_id)).mappings()
        row = dict(first.one())
        first_id = row.pop("trial_id")
        conn.execute(sa.insert(trials), [{**row, "number": k} for k in range(1, copies + 1)])
        ids = (
            conn.execute(
                sa.select(trials.c.trial_id).where(
                    trials.c.study_id == study_id, trials.c.trial_id != first_id
                )
            )
            .scalars()
            .all()
        )
        for table in children:
            pk = {c.name for c in table.primary_key.columns}
            rows = conn.execute(sa.select(table).where(table.c.trial_id == first_id)).mappings()
            template = [{k: v for k, v in r.items() if k not in pk} for r in rows]
            if template:
                conn.execute(
                    sa.insert(table), [{**r, "trial_id": i} for i in ids for r in template]
                )


class Connections:
    """The most connections to ``db`` that the PostgreSQL server had, sampled every 50 ms (this
    sampler's own not counted)."""

    def __init__(self, admin_url: str, db: str) -> None:
        self.admin_url, self.db = admin_url, db
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as con:
            while not self.stop.is_set():
                row = con.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()",
                    (self.db,),
                ).fetchone()
                self.most = max(self.most, int(row[0]) if row else 0)
                self.stop.wait(0.05)

    def __enter__(self) -> Connections:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def one(
    url: str, name: str, workers: int, per_worker: int, conns: Connections | None
) -> dict[str, Any]:
    """Raise the study's budget by ``workers * per_worker`` trials and let the workers run them."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    before = count_states(study)[0]
    goal = before + workers * per_worker
    study.set_user_attr(TARGET_ATTR, goal)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, q)) for _ in range(workers)]
    base = 0
    if conns is not None:  # the bench's own connections, before the workers start
        time.sleep(0.2)
        base, conns.most = conns.most, 0
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    held = max(0, conns.most - base) if conns is not None else None
    for p in procs:
        p.join()
    errors = sorted({r for r in results if isinstance(r, str)})
    if errors:  # the others ran the budget out (nothing was claimed twice): say why, go on
        return {"error": f"{len(errors)} kind(s) of worker failure: {'; '.join(errors)}",
                "connections": held}  # fmt: skip
    rows = [x for r in results for x in r[0]]
    joins = [r[1] for r in results if r[1] is not None]
    timings = [r[0] for r in rows]
    wall = max(r[4] for r in rows) - min(r[3] for r in rows)  # first claim to last tell
    finished, running = count_states(study)
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    ok = finished == goal and running == 0 and len(numbers) == len(set(numbers)) == goal
    q95 = statistics.quantiles(timings, n=20) if len(timings) > 1 else timings * 19
    return {
        "trials/s": len(timings) / wall,
        "median_ms": 1000 * statistics.median(timings),
        "p95_ms": 1000 * q95[18],
        "lock_ms": 1000 * statistics.median(r[1] for r in rows),
        "cpu_ms": 1000 * statistics.median(r[2] for r in rows),
        "exact": ok,
        "join_s": min(joins) if joins else None,
        "connections": held,
    }


READ_COMMANDS = {
    "status": ["status"],
    "best": ["best"],
    "trials": ["trials", "--csv", "{tmp}/trials.csv"],
    "report": ["report", "--output", "{tmp}/report"],
}
_TIMED = (
    "import sys, time\n"
    "import optuna, sqlalchemy, hpsearch.results.read, hpsearch.cli.results\n"
    "from hpsearch.cli.main import main\n"
    "t = time.perf_counter()\n"
    "code = main(sys.argv[1:])\n"
    "print(f'BENCH-SECONDS {time.perf_counter() - t}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def read_command(what: str, url: str, name: str, tmp: str) -> tuple[float, float]:
    """``hpsearch <what>`` on study ``name`` in a subprocess: (wall seconds, seconds of the
    command itself after Python's start and the imports of Optuna, SQLAlchemy and hpsearch's
    read commands)."""
    args = [a.format(tmp=tmp) for a in READ_COMMANDS[what]]
    argv = [*args[:1], "--study", name, "--storage", url, *args[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", _TIMED, *argv],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hpsearch {' '.join(args)} failed: {r.stderr.strip()[-500:]}")
    own = [ln for ln in r.stderr.splitlines() if ln.startswith("BENCH-SECONDS ")]
    return wall, float(own[-1].split()[1])


def verdict(value: float, target: float, above: bool) -> str:
    if (value >= target) if above else (value < target):
        return "met"
    if above:
        return f"missed by {target - value:.1f} ({value / target:.0%} of the target)"
    return f"missed by {value - target:.2f} s ({value / target:.1f}x the target)"


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
    p.add_argument("--report", action="store_true", help="time hpsearch report too (slow)")
    args = p.parse_args()
    db = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    base = args.pg.rsplit("/", 1)[0]
    rates: list[float] = []
    joins: dict[int, float] = {}
    largest: tuple[int, str] | None = None  # the largest prefilled PostgreSQL study
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"postgresql": f"{base}/{db}", "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        if "postgresql" in args.backends:
            with psycopg.connect(args.pg, autocommit=True) as con:
                con.execute(f'CREATE DATABASE "{db}"')
        try:
            print(
                f"{'backend':10s} {'trials':>7s} {'workers':>7s} {'trials/s':>9s} "
                f"{'median ms':>9s} {'p95 ms':>8s} {'lock ms':>8s} {'CPU ms':>7s} "
                f"{'conns':>5s}  exact"
            )
            for backend in args.backends.split(","):
                for n_prefill in (int(x) for x in args.prefill.split(",")):
                    name = f"bench-{uuid.uuid4().hex[:8]}"
                    prefill(urls[backend], name, n_prefill)
                    if backend == "postgresql" and (largest is None or n_prefill >= largest[0]):
                        largest = (n_prefill, name)
                    for w in (int(x) for x in args.workers.split(",")):
                        if backend == "postgresql":
                            with Connections(args.pg, db) as conns:
                                r = one(urls[backend], name, w, args.per_worker, conns)
                            if "error" not in r:
                                rates.append(r["trials/s"])
                            if r.get("join_s") is not None and w == 1:
                                joins[n_prefill] = r["join_s"]
                        else:
                            r = one(urls[backend], name, w, args.per_worker, None)
                        held = "-" if r["connections"] is None else str(r["connections"])
                        if "error" in r:
                            print(f"{backend:10s} {n_prefill:7d} {w:7d}  failed ({held} "
                                  f"connections held): {r['error']}", flush=True)  # fmt: skip
                            continue
                        print(
                            f"{backend:10s} {n_prefill:7d} {w:7d} {r['trials/s']:9.1f} "
                            f"{r['median_ms']:9.1f} {r['p95_ms']:8.1f} {r['lock_ms']:8.1f} "
                            f"{r['cpu_ms']:7.1f} {held:>5s}  {r['exact']}",
                            flush=True,
                        )
            if largest is not None:
                n_prefill, name = largest
                print()
                for n, seconds in sorted(joins.items()):
                    print(
                        f"join: a new worker on {n} trials starts its first trial after "
                        f"{seconds:.2f} s (target < {TARGET_JOIN:.0f} s on 10000: "
                        f"{verdict(seconds, TARGET_JOIN, above=False)})"
                    )
                reads = ["status", "best", "trials"] + (["report"] if args.report else [])
                for what in reads:
                    goal = TARGET_REPORT if what == "report" else TARGET_READ
                    wall, own = read_command(what, urls["postgresql"], name, tmp)
                    print(
                        f"read: hpsearch {what} on {n_prefill} trials: {wall:.2f} s "
                        f"({own:.2f} s after start-up) (target < {goal:.0f} s: "
                        f"{verdict(wall, goal, above=False)})",
                        flush=True,
                    )
        finally:
            if "postgresql" in args.backends:
                with psycopg.connect(args.pg, autocommit=True) as con:
                    con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    if rates:
        best = max(rates)
        print(
            f"capacity: {best:.1f} finished trials/s "
            f"(target >= {TARGET_RATE:.0f}: {verdict(best, TARGET_RATE, above=True)})"
        )


if __name__ == "__main__":
    main()
