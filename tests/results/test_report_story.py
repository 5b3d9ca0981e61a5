"""hpsearch report tells what the search was for: the seed CNN's line on the optimization history
and the gain over it in the summary's first lines, and after hpsearch confirm, confirm's winner
and table. Real SQLite studies (trials told through Optuna, confirm's results written by confirm's
own code), and one real confirm run from the command line."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import argv, hpsearch
from hpsearch.results import report
from hpsearch.results.confirmed import confirm_rows, pick_winner, summarize
from hpsearch.results.read import ranked
from hpsearch.search.confirm import record_winner
from hpsearch.storage.state import (
    BASELINE_ATTR,
    CONFIRM_RUNS,
    EPOCHS_RUN_ATTR,
    FAIL_REASON_ATTR,
    OBJECTIVES_ATTR,
    PRUNED_REASON_ATTR,
    RERUN_ATTR,
    write_attrs,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(tmp_path: Path, directions: Sequence[str] = ("maximize",)) -> optuna.Study:
    return optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}", directions=directions
    )


def tell(
    study: optuna.Study,
    value: float | Sequence[float] | None,
    state: TrialState = TrialState.COMPLETE,
    attrs: dict[str, Any] | None = None,
) -> optuna.trial.FrozenTrial:
    """One trial with a real parameter and epoch values, told in ``state`` (RUNNING: left open)."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    for k, v in (attrs or {}).items():
        trial.set_user_attr(k, v)
    if len(study.directions) == 1 and value is not None:
        trial.report(float(value) - 0.05, 1)  # type: ignore[arg-type]
    if state == TrialState.RUNNING:
        return study.trials[trial.number]
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return study.trials[trial.number]


def the_issues_study(tmp_path: Path) -> optuna.Study:
    """The issue's story: the seed CNN (trial 0) at 0.6950, the search's best trial 6 at 0.7550,
    trial 15 close behind at 0.7500."""
    study = new_study(tmp_path)
    values = [0.695, 0.70, 0.71, 0.69, 0.72, 0.73, 0.755, 0.70, 0.71, 0.72]
    values += [0.705, 0.715, 0.725, 0.735, 0.74, 0.75]
    for i, v in enumerate(values):
        tell(study, v, attrs={BASELINE_ATTR: True, EPOCHS_RUN_ATTR: 5} if i == 0 else None)
    return study


class Figures:
    """Every figure ``report`` saves, inspected before it is closed (the PNG is still written)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.legends: dict[str, list[str]] = {}
        self.hlines: dict[str, list[float]] = {}
        save = report._save

        def spy(fig: Any, path: Path) -> None:
            ax = fig.axes[0]
            legend = ax.get_legend()
            self.legends[path.stem] = [t.get_text() for t in legend.get_texts()] if legend else []
            self.hlines[path.stem] = [
                float(line.get_ydata()[0])
                for line in ax.get_lines()
                if line.get_linestyle() == "--" and len(set(line.get_ydata())) == 1
            ]
            save(fig, path)

        monkeypatch.setattr(report, "_save", spy)


def write(study: optuna.Study, out: Path) -> str:
    files = report.write_report(study, out)
    assert out / "summary.md" in files and out / "optimization_history.png" in files
    return (out / "summary.md").read_text()


def test_the_history_marks_the_seed_cnn_and_the_summary_opens_with_the_gain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figs = Figures(monkeypatch)
    summary = write(the_issues_study(tmp_path), tmp_path / "rep")
    assert "seed CNN (trial 0): 0.6950" in figs.legends["optimization_history"]
    assert figs.hlines["optimization_history"] == [pytest.approx(0.695)]
    lines = summary.splitlines()
    assert lines[0] == "# Study `s`"
    assert lines[2] == (
        "Best: validation accuracy **0.7550** in trial 6, +6.0 points (+8.6%) over the seed CNN "
        "(trial 0: 0.6950)."
    )
    assert "| 0 (seed CNN) |" not in summary  # trial 0 is not among the 10 best here
    assert "the dashed line is the seed CNN (trial 0: 0.6950)" in summary
    assert "Parameters of trial 6 (the best trial):" in summary


def test_when_the_seed_cnn_is_the_best_the_summary_says_so(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    tell(study, 0.70, attrs={BASELINE_ATTR: True})
    tell(study, 0.65)
    summary = write(study, tmp_path / "rep")
    assert summary.splitlines()[2] == (
        "Best: validation accuracy **0.7000** in trial 0: the seed CNN itself, no other trial "
        "beat it."
    )
    assert "| 0 (seed CNN) | 0.7000 |" in summary


@pytest.mark.parametrize(
    ("state", "attrs", "why"),
    [
        (
            TrialState.PRUNED,
            {PRUNED_REASON_ATTR: "median pruner at epoch 1"},
            "the seed CNN (trial 2) was pruned (median pruner at epoch 1)",
        ),
        (
            TrialState.FAIL,
            {FAIL_REASON_ATTR: "CUDA error: device-side assert"},
            "the seed CNN (trial 2) failed (CUDA error: device-side assert)",
        ),
        (TrialState.RUNNING, {}, "the seed CNN (trial 2) is still running"),
        (TrialState.WAITING, {}, "the seed CNN (trial 2) has not started yet"),
        (
            None,
            {},
            "no trial is the seed CNN (search.enqueue_baseline was off, or hpsearch did not "
            "make this study)",
        ),
    ],
)
def test_no_baseline_value_no_line_and_the_summary_says_why(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: TrialState | None,
    attrs: dict[str, Any],
    why: str,
) -> None:
    study = new_study(tmp_path)  # a plain Optuna study: no hpsearch attribute but the mark
    tell(study, 0.62)
    tell(study, 0.64)
    if state == TrialState.WAITING:
        study.enqueue_trial({"lr": 1e-3}, user_attrs={BASELINE_ATTR: True})
    elif state is not None:
        tell(study, 0.5, state, {BASELINE_ATTR: True, **attrs})
    figs = Figures(monkeypatch)
    summary = write(study, tmp_path / "rep")
    assert figs.hlines["optimization_history"] == []
    assert not any("seed CNN" in x for x in figs.legends["optimization_history"])
    lines = summary.splitlines()
    assert lines[2] == "Best: validation accuracy **0.6400** in trial 1."
    assert lines[4] == f"No gain over the seed CNN to report: {why}."
    assert "dashed line" not in summary


def test_an_interrupted_seed_cnn_is_compared_through_its_re_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = new_study(tmp_path)
    stopped = {BASELINE_ATTR: True, FAIL_REASON_ATTR: "stopped by KeyboardInterrupt"}
    tell(study, None, TrialState.FAIL, stopped)
    tell(study, 0.66)
    tell(study, 0.68, attrs={BASELINE_ATTR: True, RERUN_ATTR: 0})
    figs = Figures(monkeypatch)
    summary = write(study, tmp_path / "rep")
    assert "seed CNN (trial 2): 0.6800" in figs.legends["optimization_history"]
    assert "in trial 2: the seed CNN itself" in summary.splitlines()[2]

    # while the re-run waits, its state says why there is no value, naming both trials
    (tmp_path / "w").mkdir()
    study = new_study(tmp_path / "w")
    tell(study, None, TrialState.FAIL, stopped)
    tell(study, 0.66)
    study.enqueue_trial({"lr": 1e-3}, user_attrs={BASELINE_ATTR: True, RERUN_ATTR: 0})
    summary = write(study, tmp_path / "rep-w")
    assert (
        "No gain over the seed CNN to report: the seed CNN (trial 2, the re-run of trial 0) has "
        "not started yet."
    ) in summary


def test_a_pareto_study_compares_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = new_study(tmp_path, ("maximize", "minimize"))
    study.set_user_attr(OBJECTIVES_ATTR, ["val_accuracy", "latency_ms"])
    tell(study, (0.60, 2.0), attrs={BASELINE_ATTR: True})
    tell(study, (0.75, 5.0))
    tell(study, (0.70, 1.0))
    figs = Figures(monkeypatch)
    summary = write(study, tmp_path / "rep")
    assert "seed CNN (trial 0): 0.6000" in figs.legends["optimization_history"]
    assert (tmp_path / "rep" / "pareto_front.png").is_file()
    assert summary.splitlines()[2] == (
        "Best: validation accuracy **0.7500** in trial 1, +15.0 points (+25.0%) over the seed "
        "CNN (trial 0: 0.6000)."
    )


def confirm_as_confirm_does(
    study: optuna.Study,
    results: dict[int, list[tuple[float | None, float | None]]],
    seeds: int,
    store: Path,
    test_dir: str | None = "/data/test",
    winner: bool = True,
) -> None:
    """Record confirm runs (val, test accuracy per run) on the trials and, with ``winner``, the
    winner, through confirm's own code (summarize, write_attrs, confirm_rows, pick_winner,
    record_winner); only the training is left out."""
    top = [t for t in ranked(study) if t.number in results]
    for t in top:
        runs = []
        for run, (val, test) in enumerate(results[t.number]):
            entry: dict[str, Any] = {"run": run, "seed": 1000 + run, "val_accuracy": val}
            if test is not None:
                entry.update(test_accuracy=test, test_images=100, test_data=test_dir)
            runs.append(entry)
        runs[0]["kept"] = True
        write_attrs(study, t, {CONFIRM_RUNS: runs, **summarize(runs)})
    if winner:
        rows = confirm_rows(study, top, seeds)
        chosen = pick_winner(rows)
        assert chosen is not None
        record_winner(study, chosen, len(top), seeds, store)


def test_after_confirm_the_summary_opens_with_confirms_winner_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = the_issues_study(tmp_path)
    runs = {
        6: [(0.745, 0.75), (0.735, 0.74), (0.74, 0.745)],  # the search's best, 0.7400 on average
        15: [(0.750, 0.75), (0.770, 0.77), (0.766, 0.763)],  # 0.7620 ± 0.0106
        14: [(0.73, 0.72), (0.72, 0.73), (None, None)],  # one diverged run
    }
    confirm_as_confirm_does(study, runs, 3, tmp_path / "store")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    assert study.user_attrs["confirmed"]["trial"] == 15
    figs = Figures(monkeypatch)
    summary = write(study, tmp_path / "rep")
    lines = summary.splitlines()
    assert lines[2] == (
        "Confirmed winner (hpsearch confirm): trial 15, val_accuracy 0.7620 ± 0.0106 over 3 "
        "seeds, test 0.7610 ± 0.0101 on `/data/test`; +6.7 points (+9.6%) over the seed CNN "
        "(trial 0: 0.6950 in its one search run)."
    )
    assert lines[4] == (
        "The search's best: validation accuracy **0.7550** in trial 6 (one run), +6.0 points "
        "(+8.6%) over the seed CNN (trial 0: 0.6950); confirm measured it at 0.7400 over new "
        "seeds."
    )
    # confirm's own table, as confirm prints it
    table = summary[summary.index("```text\n") + 8 : summary.index("\n```\n")].splitlines()
    head = "trial search val confirmed val (mean ± std) runs test (mean ± std)"
    assert table[0].split() == head.split()
    assert [r.split()[0] for r in table[1:]] == ["6", "15", "14"]
    winner = r"\s+15\s+0\.7500\s+0\.7620 ± 0\.0106\s+3/3\s+0\.7610 ± 0\.0101  <- winner"
    assert re.fullmatch(winner, table[2]), table[2]
    assert "(1 diverged)" in table[3]
    assert "Parameters of trial 15 (the confirmed winner):" in summary
    assert "| 6 | 0.7550 |" in summary and "| 15 (confirmed winner) | 0.7500 |" in summary
    legend = figs.legends["optimization_history"]
    assert "seed CNN (trial 0): 0.6950" in legend
    assert "confirmed winner (trial 15): 0.7620 ± 0.0106 over 3 seeds" in legend


def test_a_confirmed_seed_cnn_is_compared_on_the_same_seeds(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    tell(study, 0.70, attrs={BASELINE_ATTR: True})
    tell(study, 0.72)
    confirm_as_confirm_does(
        study, {0: [(0.66, None), (0.68, None)], 1: [(0.71, None), (0.73, None)]}, 2, tmp_path
    )
    lines = write(study, tmp_path / "rep").splitlines()
    assert lines[2] == (
        "Confirmed winner (hpsearch confirm): trial 1, val_accuracy 0.7200 ± 0.0141 over 2 "
        "seeds; +5.0 points (+7.5%) over the seed CNN (trial 0: 0.6700 over the same "
        "confirm's seeds)."
    )


def test_a_confirm_stopped_before_its_winner_shows_its_table(tmp_path: Path) -> None:
    study = the_issues_study(tmp_path)
    runs: dict[int, list[tuple[float | None, float | None]]] = {
        6: [(0.74, None)],
        15: [(0.75, None)],
    }
    confirm_as_confirm_does(study, runs, 1, tmp_path, None, winner=False)
    summary = write(study, tmp_path / "rep")
    assert summary.splitlines()[2].startswith("Best: validation accuracy **0.7550** in trial 6,")
    assert "## Confirmed over new seeds" in summary and "<- winner" not in summary
    assert "No winner yet: confirm stopped before every run was recorded" in summary


def test_a_plain_study_with_other_confirm_attributes_still_reports(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    tell(study, 0.6, attrs={BASELINE_ATTR: True, CONFIRM_RUNS: "three runs"})
    tell(study, 0.7)
    study.set_user_attr("confirmed", "yes")
    summary = write(study, tmp_path / "rep")
    assert summary.splitlines()[2].startswith("Best: validation accuracy **0.7000** in trial 1, ")
    assert (
        "Confirm's results are not shown: study 's': user attribute 'confirmed' is 'yes', not a "
        "mapping"
    ) in summary
    assert "## Confirmed over new seeds" not in summary


@pytest.mark.slow
def test_report_after_a_real_confirm(smoke_study: Path, tmp_path: Path, data_root: Path) -> None:
    """The smoke search (trial 0 is the seed CNN), confirmed from the command line with a test
    directory: the report's first line is confirm's winner, and its table is the one confirm
    printed."""
    work = tmp_path / "copy"
    shutil.copytree(smoke_study, work)
    for cls in ("cat", "dog"):
        (work / "unseen" / cls).mkdir(parents=True)
        for f in sorted((data_root / "val" / cls).iterdir())[-10:]:
            shutil.copy(f, work / "unseen" / cls / f.name)
    tiny = "--set data.max_per_class=40 --set data.val_max_per_class=20"
    r = hpsearch(argv(f"confirm --study smoke --top 2 --seeds 2 --data unseen {tiny}"), work)
    assert r.returncode == 0, r.stdout + r.stderr
    printed = r.stdout.splitlines()
    head = next(i for i, x in enumerate(printed) if x.lstrip().startswith("trial  search val"))

    r = hpsearch(argv("report --study smoke --output rep"), work)
    assert r.returncode == 0, r.stderr
    summary = (work / "rep" / "summary.md").read_text()
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")
    c = study.user_attrs["confirmed"]
    lines = summary.splitlines()
    assert lines[2].startswith(
        f"Confirmed winner (hpsearch confirm): trial {c['trial']}, val_accuracy "
        f"{c['val_accuracy_mean']:.4f} ± {c['val_accuracy_std']:.4f} over 2 seeds, test "
        f"{c['test_accuracy_mean']:.4f} ± "
    )
    assert f" on `{work / 'unseen'}`" in lines[2] and "over the seed CNN (trial 0: " in lines[2]
    best = ranked(study)[0]
    assert lines[4].startswith(
        f"The search's best: validation accuracy **{best.values[0]:.4f}** in trial {best.number}"
    )
    table = summary[summary.index("```text\n") + 8 : summary.index("\n```\n")].splitlines()
    assert table == printed[head : head + 3]
    assert "the dashed line is the seed CNN (trial 0: " in summary


def test_the_per_epoch_plot_names_a_few_trials_not_hundreds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's per-epoch plot has a legend entry per trial: kept for a few trials, dropped past
    report.MAX_LEGEND (a 10,000-trial study's legend took matplotlib minutes to lay out)."""
    (tmp_path / "few").mkdir()
    (tmp_path / "many").mkdir()
    few, many = new_study(tmp_path / "few"), new_study(tmp_path / "many")
    for i in range(3):
        tell(few, 0.5 + i / 100)
    for i in range(report.MAX_LEGEND + 5):
        tell(many, 0.5 + i / 100)
    figures = Figures(monkeypatch)
    write(few, tmp_path / "few" / "report")
    assert len(figures.legends["intermediate_values"]) == 3
    write(many, tmp_path / "many" / "report")
    assert figures.legends["intermediate_values"] == []
    assert (tmp_path / "many" / "report" / "intermediate_values.png").is_file()


def test_past_max_lines_the_per_epoch_plot_is_one_collection_of_every_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study of more than report.MAX_LINES trials with epoch values gets its per-epoch plot as
    one collection of lines (Optuna's draws a line and a legend entry per trial: 20 s for 10,000
    trials), every trial's curve in it."""
    from matplotlib.collections import LineCollection

    study = new_study(tmp_path)
    for i in range(8):
        tell(study, 0.5 + i / 100)
    monkeypatch.setattr(report, "MAX_LINES", 5)
    drawn: list[int] = []
    save = report._save

    def spy(fig: Any, path: Path) -> None:
        if path.stem == "intermediate_values":
            ax = fig.axes[0]
            assert ax.get_legend() is None
            drawn.extend(
                len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)
            )
        save(fig, path)

    monkeypatch.setattr(report, "_save", spy)
    write(study, tmp_path / "report")
    assert drawn == [8]
