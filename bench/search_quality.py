"""Search quality: does ``hpsearch run`` find clearly better CNNs than the seed, and what do its
sampler and pruner buy?

Every arm is a real search: the real objective (``hpsearch.search.objective.make_objective``), the
real photos, one SQLite file holding every study, the study's own sampler and pruner built by
``hpsearch.storage.study``. Each arm runs once per repeat; a repeat changes both the sampler's seed
and every trial's training seed (``search.seed``). The images are decoded once and every search
trains on the same in-memory tensors.

For each arm it prints the best validation accuracy after the budget (mean, min and max over the
repeats), the same best trial retrained with a new seed (the best of many noisy trials is an
optimistic pick; the retrain is not), the epochs and seconds spent, and the seed baseline
(trial 0 of a new study, trained for the full epochs) as the reference line. It writes
``results.md`` (the table), ``best_vs_epochs.png`` (best so far against cumulative epochs, one line
per arm, the baseline marked) and ``results.json`` to ``--out``.

Arms are ``NAME=SAMPLER/PRUNER`` with an optional ``@STUDY`` (a study name or file; default the
``--study``) and optional ``+KEY=VALUE`` study-file overrides of that arm alone:
``tpe-median=tpe/median``, ``v0=tpe/median@bench/catdog_v0.yaml``,
``no-near=tpe/median+search.near_baseline=0``.

    python bench/search_quality.py                      # the defaults
    python bench/search_quality.py --arm new=tpe/median \\
        --arm v0=tpe/median@bench/catdog_v0.yaml        # the catdog study before and after
    python bench/search_quality.py --image-size 128 --per-class 8000 --val-per-class 2000 \\
        --epochs 15 --trials 60 --out sq-gpu            # full size, on a GPU
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hpsearch.cli.results import positive_int
from hpsearch.config import Override, StudyConfig, load_study, parse_set
from hpsearch.errors import HpsearchError
from hpsearch.search.workers import requeue_interrupted, reruns_first
from hpsearch.space import params_source, sample_values, to_trial_spec, trial_seed
from hpsearch.storage import optuna_private
from hpsearch.storage.state import BASELINE_ATTR, FAIL_REASON_ATTR, STOPPED_PREFIX
from hpsearch.storage.study import open_study
from hpsearch.storage.urls import open_storage

if TYPE_CHECKING:  # torch: imported once the arguments are checked (a bad arm is one quick line)
    from hpsearch.engine.data import DeviceData

REPO = Path(__file__).resolve().parents[1]
CHANCE = 0.52  # a validation accuracy no better than guessing on two balanced classes
DEFAULT_ARMS = (
    "tpe-median=tpe/median",
    "random-median=random/median",
    "tpe-none=tpe/none",
)  # add --arm grid-median=grid/median for the grid (3 arms took 59 of the 90 minutes here)
# The catdog study before the search-quality work, for a before/after run:
#   python bench/search_quality.py --arm new=tpe/median --arm v0=tpe/median@bench/catdog_v0.yaml


@dataclass(frozen=True)
class Arm:
    name: str
    sampler: str
    pruner: str
    study: str
    sets: tuple[str, ...] = ()  # KEY=VALUE overrides of this arm


@dataclass
class SearchResult:
    arm: str
    repeat: int
    best: float | None  # the best COMPLETE trial's validation accuracy
    best_trial: int | None
    best_params: dict[str, Any]
    retrained: float | None  # the best trial's configuration, trained again with a new seed
    baseline: float | None  # trial 0 when it is the seed baseline
    epochs: int  # epochs trained by every trial of the search
    seconds: float  # wall time of the search (retrain excluded)
    states: dict[str, int]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (cumulative epochs, best)
    trials: list[dict[str, Any]] = field(default_factory=list)  # number, state, epochs, value


def parse_arm(text: str, default_study: str) -> Arm:
    name, sep, rest = text.partition("=")
    rest, *sets = rest.split("+")
    how, _, study = rest.partition("@")
    sampler, slash, pruner = how.partition("/")
    if not sep or not slash or not name or not sampler or not pruner or "" in sets:
        raise SystemExit(f"--arm {text!r}: expected NAME=SAMPLER/PRUNER[@STUDY][+KEY=VALUE...]")
    return Arm(name, sampler, pruner, study or default_study, tuple(sets))


def arm_config(arm: Arm, args: argparse.Namespace, repeat_seed: int) -> StudyConfig:
    sets = [
        ("data.root", str(args.data)),
        ("data.image_size", args.image_size),
        ("data.max_per_class", args.per_class),
        ("data.val_max_per_class", args.val_per_class),
        ("train.epochs", args.epochs),
        ("train.device", args.device),
        ("search.seed", repeat_seed),
        ("search.keep_checkpoints", 0),
    ]
    overrides = [Override(k, v, f"--{k}") for k, v in sets]
    overrides += [parse_set(s) for s in [*args.set, *arm.sets]]
    file_search = load_study(arm.study, overrides).search
    for key, named, wanted in (
        ("search.sampler", file_search.sampler, arm.sampler),
        ("search.pruner", file_search.pruner, arm.pruner),
    ):  # an arm's own +search.pruner={...} is not replaced by its PRUNER's default options
        if named.name != wanted and any(s.partition("=")[0].strip() == key for s in arm.sets):
            raise SystemExit(
                f"--arm {arm.name}: its +{key} is {named.name!r} but the arm says {wanted!r}; "
                f"name it {arm_text(replace(arm, **{key.split('.')[1]: named.name}))!r}"
            )
    # like hpsearch run --sampler/--pruner: a different one replaces the file's, default options
    if arm.sampler != file_search.sampler.name:
        overrides.append(Override("search.sampler", arm.sampler, f"--arm {arm.name}"))
    if arm.pruner != file_search.pruner.name:
        overrides.append(Override("search.pruner", arm.pruner, f"--arm {arm.name}"))
    return load_study(arm.study, overrides)


def epochs_of(t: optuna.trial.FrozenTrial) -> int:
    return len(t.intermediate_values)


def run_search(
    arm: Arm,
    cfg: StudyConfig,
    data: DeviceData,
    storage: optuna.storages.BaseStorage,
    repeat: int,
    trials: int,
    log: bool,
    retrain_cache: dict[str, float],
) -> SearchResult:
    name = f"{arm.name}-r{repeat}"
    study = open_study(cfg, storage, name)
    storage_ = optuna_private.storage_of(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left by a killed run: marked as a Ctrl-C'd trial is, so that hpsearch's own re-run
        # (below) runs it again with its parameters and seed, the seed baseline above all
        storage_.set_trial_user_attr(
            optuna_private.trial_id(t), FAIL_REASON_ATTR, f"{STOPPED_PREFIX}killed"
        )
        study.tell(t.number, state=TrialState.FAIL)
    requeue_interrupted(study)
    reruns_first(study)
    done = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    t0 = time.perf_counter()

    def show(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if log:
            value = f"{t.value:.4f}" if t.value is not None else "-"
            print(
                f"  {name} trial {t.number}: {t.state.name.lower()} after {epochs_of(t)} "
                f"epochs, val_acc {value} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )

    from hpsearch.search.objective import TrialOutOfMemory, make_objective

    objective = make_objective(cfg, data)
    study.optimize(
        objective, n_trials=max(trials - done, 0), catch=(TrialOutOfMemory,), callbacks=[show]
    )
    ran = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # not enqueued, unrun ones
    all_trials = sorted(study.get_trials(deepcopy=False, states=ran), key=lambda t: t.number)
    # from the trials' own timestamps, so that a search resumed after a killed run counts its
    # earlier trials too
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in all_trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value or 0.0, default=None)
    baseline = next(  # the seed baseline's run that finished (a killed one is run again)
        (t.value for t in complete if t.user_attrs.get(BASELINE_ATTR)), None
    )
    curve: list[tuple[int, float]] = []
    spent, best_so_far = 0, 0.0
    for t in all_trials:
        spent += epochs_of(t)
        if t.state == TrialState.COMPLETE and t.value is not None:
            best_so_far = max(best_so_far, t.value)
        curve.append((spent, best_so_far))
    states: dict[str, int] = {}
    for t in all_trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    retrained = None
    if best is not None:
        values = sample_values(cfg.search, params_source(best.params, f"trial {best.number}"))
        # a seed no trial of this study used: the configuration is judged, not its lucky draw
        seed = trial_seed(cfg.search.seed + 7_919, best.number)
        spec = to_trial_spec(values, cfg, seed)
        # arms of one repeat share their seed and often their winner: the same spec trains once
        key = repr((spec, cfg.train.eval_batch_size))
        if key not in retrain_cache:
            from hpsearch.engine.train import fit

            retrain_cache[key] = fit(spec, data, None, cfg.train.eval_batch_size).val_accuracy
        retrained = retrain_cache[key]
    return SearchResult(
        arm=arm.name,
        repeat=repeat,
        best=best.value if best is not None else None,
        best_trial=best.number if best is not None else None,
        best_params=dict(best.params) if best is not None else {},
        retrained=retrained,
        baseline=baseline,
        epochs=spent,
        seconds=seconds,
        states=states,
        curve=curve,
        trials=[
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "epochs": epochs_of(t),
                "value": t.value,
                "best_epoch_value": max(t.intermediate_values.values(), default=None),
                "params": t.params,
            }
            for t in all_trials
        ],
    )


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ({min(values):.4f}-{max(values):.4f})"


def table(results: list[SearchResult], arms: list[Arm], reference: float | None) -> str:
    ref = f"{reference:.4f}" if reference is not None else "-"
    lines = [
        "| arm | sampler/pruner | best val_acc, mean (min-max) | vs baseline | best retrained, "
        "new seed | epochs | seconds | complete/pruned/failed | never learned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        rs = [r for r in results if r.arm == arm.name]
        if not rs:
            continue
        bests = [r.best for r in rs if r.best is not None]
        retrained = [r.retrained for r in rs if r.retrained is not None]
        gain = (
            f"{100 * (statistics.fmean(bests) - reference):+.1f} pts"
            if bests and reference is not None
            else "-"
        )
        epochs = statistics.fmean(r.epochs for r in rs)
        seconds = statistics.fmean(r.seconds for r in rs)
        counts = "/".join(
            f"{statistics.fmean(r.states.get(s, 0) for r in rs):.1f}"
            for s in ("complete", "pruned", "fail")
        )
        study = "" if arm.study == arms[0].study else f" @{Path(arm.study).stem}"
        study += "".join(f" +{kv}" for kv in arm.sets)
        dead = statistics.fmean(sum(never_learned(t) for t in r.trials) for r in rs)
        lines.append(
            f"| {arm.name} | {arm.sampler}/{arm.pruner}{study} | {_stats(bests)} | {gain} | "
            f"{_stats(retrained)} | {epochs:.0f} | {seconds:.0f} | {counts} | {dead:.1f} |"
        )
    lines.append(f"| seed baseline (trial 0) | - | {ref} | - | - | - | - | - | - |")
    return "\n".join(lines)


def never_learned(trial: dict[str, Any]) -> bool:
    """A trial whose validation accuracy never left chance (two balanced classes: 0.5)."""
    best = trial.get("best_epoch_value")
    return best is not None and best <= CHANCE


def comparisons(results: list[SearchResult], arms: list[Arm], reference: float | None) -> str:
    """The questions the benchmark answers, one line each, from the arms that answer them."""

    def mean_best(arm: Arm) -> float:
        return statistics.fmean(r.best or 0.0 for r in results if r.arm == arm.name)

    def mean_epochs(arm: Arm) -> float:
        return statistics.fmean(r.epochs for r in results if r.arm == arm.name)

    def twin(arm: Arm, **change: str) -> Arm | None:
        want = {"sampler": arm.sampler, "pruner": arm.pruner, **change}
        return next(
            (
                a
                for a in arms
                if (a.sampler, a.pruner) == (want["sampler"], want["pruner"])
                and (a.study, a.sets) == (arm.study, arm.sets)
            ),
            None,
        )

    lines = []
    head = arms[0]
    if reference is not None:
        for arm in arms:
            # each repeat against its own baseline (the same training seed) where it ran one
            per_repeat = [
                r.best - (r.baseline if r.baseline is not None else reference)
                for r in results
                if r.arm == arm.name and r.best is not None
            ]
            if per_repeat:
                lines.append(
                    f"- {arm.name}: best beats the seed baseline by "
                    f"{100 * statistics.fmean(per_repeat):+.1f} points on average "
                    f"(worst repeat {100 * min(per_repeat):+.1f})"
                )
    rnd = twin(head, sampler="random")
    if rnd is not None and head.sampler != "random":
        lines.append(
            f"- {head.sampler} vs random ({head.pruner} pruner): mean best {mean_best(head):.4f} "
            f"vs {mean_best(rnd):.4f} ({100 * (mean_best(head) - mean_best(rnd)):+.1f} points)"
        )
    nop = twin(head, pruner="none")
    if nop is not None and head.pruner != "none":
        saved = 1 - mean_epochs(head) / mean_epochs(nop)
        lines.append(
            f"- {head.pruner} pruner vs none ({head.sampler}): {saved:.0%} fewer epochs "
            f"({mean_epochs(head):.0f} vs {mean_epochs(nop):.0f}), mean best "
            f"{100 * (mean_best(head) - mean_best(nop)):+.1f} points"
        )
    return "\n".join(lines)


def plot(results: list[SearchResult], arms: list[Arm], reference: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        rs = [r for r in results if r.arm == arm.name and r.curve]
        if not rs:
            continue
        color = colors[i % len(colors)]
        # mean over repeats of the best-so-far step functions, on a common epoch axis
        horizon = max(r.curve[-1][0] for r in rs)
        xs = list(range(1, horizon + 1))
        means = []
        for x in xs:
            ys = [max((b for e, b in r.curve if e <= x), default=math.nan) for r in rs]
            known = [y for y in ys if not math.isnan(y) and y > 0]
            means.append(statistics.fmean(known) if len(known) == len(rs) else math.nan)
        ax.plot(xs, means, color=color, label=arm.name, linewidth=1.8)
        for r in rs:
            ax.plot(*zip(*r.curve, strict=True), color=color, alpha=0.2, linewidth=0.8)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label="seed baseline")
    ax.set_xlabel("cumulative training epochs (all trials of a search)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Search quality: mean over repeats (thin lines: each repeat)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "catdog",
        help="ImageFolder root (default: ../shared/data/catdog)",
    )
    ap.add_argument("--out", type=Path, default=Path("search-quality"), help="output folder")
    ap.add_argument("--study", default="catdog", help="study name or file (default: catdog)")
    ap.add_argument(
        "--arm",
        action="append",
        help=f"NAME=SAMPLER/PRUNER[@STUDY], repeatable (default: {' '.join(DEFAULT_ARMS)})",
    )
    ap.add_argument("--repeats", type=positive_int, default=3, help="seeds per arm (default: 3)")
    ap.add_argument(
        "--trials", type=positive_int, default=20, help="trials per search (default: 20)"
    )
    ap.add_argument("--epochs", type=positive_int, default=5, help="train.epochs (default: 5)")
    ap.add_argument(
        "--image-size", type=positive_int, default=32, help="data.image_size (default: 32)"
    )
    ap.add_argument(
        "--per-class",
        type=positive_int,
        default=1200,
        help="training images per class (default: 1200)",
    )
    ap.add_argument(
        "--val-per-class",
        type=positive_int,
        default=1000,
        help="validation images per class (default: 1000)",
    )
    ap.add_argument("--device", default="auto", help="train.device (default: auto)")
    ap.add_argument("--set", action="append", default=[], help="more study-file overrides")
    ap.add_argument("--quiet", action="store_true", help="no line per trial")
    ap.add_argument(
        "--replot", type=Path, metavar="DIR", help="only rewrite DIR's table and plot from its JSON"
    )
    args = ap.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot, args.arm)
    arms = [parse_arm(a, args.study) for a in (args.arm or DEFAULT_ARMS)]
    if len({a.name for a in arms}) != len(arms):
        raise SystemExit("arm names must differ")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        lock = (args.out / ".running").open("w")  # held until the process exits
    except OSError as e:
        raise SystemExit(f"--out {args.out}: {e.strerror}") from None
    try:  # a second run into the same folder would add trials to the same studies
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"--out {args.out}: another search_quality run is using it") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    os.chdir(REPO)  # study files such as bench/catdog_v0.yaml are relative to the repository

    try:
        configs = {
            (arm.name, r): arm_config(arm, args, repeat_seed=1 + r)
            for arm in arms
            for r in range(args.repeats)
        }
        first = configs[(arms[0].name, 0)]
        from hpsearch.engine.data import load_data
        from hpsearch.engine.train import resolve_device

        device = resolve_device(first.train.device)
        t0 = time.perf_counter()
        data = load_data(first.data, device)
        storage = open_storage(f"sqlite:///{(args.out / 'studies.db').resolve()}")
    except HpsearchError as e:
        print(f"search_quality: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback either
        print("\nsearch_quality: interrupted before the first search; nothing ran", file=sys.stderr)
        return 130
    print(
        f"data: {len(data.train_labels)} train / {len(data.val_labels)} val images at "
        f"{data.image_size}px on {device} (loaded in {time.perf_counter() - t0:.1f}s); "
        f"{len(arms)} arms x {args.repeats} repeats x {args.trials} trials of up to "
        f"{args.epochs} epochs",
        flush=True,
    )
    results: list[SearchResult] = []
    meta: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    progress = {"written": 0}  # repeats whose report is written
    try:
        run_all(args, arms, configs, first, data, storage, results, meta, progress)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback either
        written = progress["written"]
        where = (
            f"the results of repeats 0-{written - 1} are in {args.out}/results.md"
            if written
            else "no repeat finished"
        )
        print(
            f"\nsearch_quality: interrupted; {where}; the same command continues where it stopped",
            file=sys.stderr,
        )
        return 130
    report(results, arms, args.out, meta)
    print(f"whole benchmark: {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


def run_all(
    args: argparse.Namespace,
    arms: list[Arm],
    configs: dict[tuple[str, int], StudyConfig],
    first: StudyConfig,
    data: DeviceData,
    storage: optuna.storages.BaseStorage,
    results: list[SearchResult],
    meta: dict[str, Any],
    progress: dict[str, int],
) -> None:
    """Every arm's repeats, interleaved, appending to ``results``; after each repeat but the
    last, the report of the repeats so far."""
    retrain_cache: dict[str, float] = {}
    started = time.perf_counter()
    for r in range(args.repeats):  # interleaved: machine noise hits every arm alike
        for arm in arms:
            cfg = configs[(arm.name, r)]
            if cfg.data != first.data:
                raise SystemExit(f"arm {arm.name}: its data section differs from the first arm's")
            res = run_search(arm, cfg, data, storage, r, args.trials, not args.quiet, retrain_cache)
            results.append(res)
            print(
                f"{arm.name} repeat {r}: best {res.best} (trial {res.best_trial}), retrained "
                f"{res.retrained}, {res.epochs} epochs, {res.seconds:.0f}s, {res.states}",
                flush=True,
            )
        # the figure that sizes the defaults: does the whole run fit its budget here? From the
        # trials' own times, so that a resumed run's estimate counts the repeats it skipped
        searched = sum(x.seconds for x in results) / 60
        here = (time.perf_counter() - started) / 60
        print(
            f"repeats 0-{r}: {searched:.1f} min of searches ({here:.1f} min in this run); "
            f"the {args.repeats} repeats at this pace: about "
            f"{searched / (r + 1) * args.repeats:.0f} min",
            flush=True,
        )
        if r + 1 < args.repeats:  # a run stopped later still leaves the repeats it finished
            report(results, arms, args.out, meta, done=r + 1)
            progress["written"] = r + 1  # before the line: a Ctrl-C after it finds it set
            print(f"results of repeats 0-{r} so far: {args.out}/results.md", flush=True)


def report(
    results: list[SearchResult],
    arms: list[Arm],
    out: Path,
    meta: dict[str, Any],
    done: int | None = None,
) -> None:
    """Print and write the table, the comparisons, the plot and the JSON; with ``done``, those
    of the first ``done`` repeats only, written without printing the table."""
    baselines = [r.baseline for r in results if r.baseline is not None and r.arm == arms[0].name]
    reference = statistics.fmean(baselines) if baselines else None
    md = table(results, arms, reference) + "\n\n" + comparisons(results, arms, reference)
    if done is not None:
        md = f"Partial: the first {done} of {meta['args']['repeats']} repeats.\n\n" + md
    else:
        print()
        print(md)
    (out / "results.md").write_text(md + "\n")
    doc = {
        **meta,
        "repeats_done": done if done is not None else len({r.repeat for r in results}),
        "arms": [arm_text(a) for a in arms],
        "baseline_mean": reference,
        "results": [r.__dict__ for r in results],
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    plot(results, arms, reference, out / "best_vs_epochs.png")
    if done is None:
        print(f"\nwrote {out}/results.md, results.json, best_vs_epochs.png")


def arm_text(arm: Arm) -> str:
    return f"{arm.name}={arm.sampler}/{arm.pruner}@{arm.study}" + "".join(
        f"+{kv}" for kv in arm.sets
    )


def replot(folder: Path, arm_texts: list[str] | None) -> int:
    """Rewrite the table and plot of an earlier run from its results.json (its arms, or those
    given)."""
    try:
        doc = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as e:
        print(f"search_quality: --replot {folder}: {e}", file=sys.stderr)
        return 2
    arms = [parse_arm(a, "catdog") for a in arm_texts or doc.get("arms") or DEFAULT_ARMS]
    results = []
    for r in doc["results"]:
        r["curve"] = [tuple(point) for point in r["curve"]]
        for t in r["trials"]:  # runs before best_epoch_value was recorded: the final value
            t.setdefault("best_epoch_value", t["value"])
        results.append(SearchResult(**r))
    meta = {k: v for k, v in doc.items() if k == "args"}
    done = doc.get("repeats_done")  # a partial run's JSON stays partial
    partial = "args" in meta and done is not None and str(done) != meta["args"].get("repeats")
    report(results, arms, folder, meta, done=done if partial else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
