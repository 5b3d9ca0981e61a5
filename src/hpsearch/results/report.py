"""A study as PNG plots (Optuna's matplotlib visualisations) and a markdown summary linking them,
opening with what the search was for: the gain over the seed CNN and confirm's winner (see
:mod:`hpsearch.results.story`)."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError, first_line
from hpsearch.files import atomic_write
from hpsearch.results.read import ranked
from hpsearch.results.story import (
    Story,
    confirm_section,
    first_lines,
    history_caption,
    mark_history,
    story_of,
    trial_mark,
)
from hpsearch.storage.state import EPOCHS_RUN_ATTR
from hpsearch.storage.study import objectives_of

PLOTS: tuple[tuple[str, str, str], ...] = (
    ("optimization_history", "Optimization history", "validation accuracy of each trial"),
    ("param_importances", "Hyperparameter importances", "fANOVA over the completed trials"),
    ("intermediate_values", "Intermediate values", "accuracy per epoch: where pruned trials stop"),
    (
        "parallel_coordinate",
        "Parallel coordinates",
        "the most important parameters of the completed trials",
    ),
)


PARETO = ("pareto_front", "Pareto front", "accuracy against the second objective: the trade-off")


def _plotters() -> dict[str, Callable[..., Any]]:
    from optuna.visualization import matplotlib as vis

    return {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "intermediate_values": _intermediate_values,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "pareto_front": vis.plot_pareto_front,
    }


def write_report(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write the PNGs and ``summary.md`` into ``out_dir`` (created); returns the files."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpsearchError(f"--output {out_dir}: cannot create: {e.strerror or e}") from None
    completed = ranked(study)
    trials = study.get_trials(deepcopy=False)
    story = story_of(study, trials)
    written: list[Path] = []
    shown: list[tuple[str, str, str]] = []
    notes: list[str] = []
    objectives = objectives_of(study)
    two = len(objectives) > 1
    top_params = _most_important(study, len(completed), two)
    plots = PLOTS + ((PARETO,) if two else ())
    for key, title, what in plots:
        if key == "intermediate_values" and two:
            notes.append(f"{title}: none, Optuna keeps no per-epoch values with two objectives")
            continue
        if key == "param_importances" and len(completed) < 2:
            notes.append(f"{title}: skipped, it needs at least 2 completed trials")
            continue
        if key != "intermediate_values" and not completed:
            notes.append(f"{title}: skipped, no completed trial yet")
            continue
        path = out_dir / f"{key}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks the matplotlib backend experimental
                extra: dict[str, Any] = {}
                if key == "parallel_coordinate":
                    extra["params"] = top_params
                if key == "pareto_front":
                    extra["target_names"] = objectives
                elif key != "intermediate_values":
                    extra["target_name"] = "val_accuracy"
                    if two:  # plot the first objective, accuracy
                        extra["target"] = _accuracy
                ax = _plotters()[key](study, **extra)
                if key == "optimization_history":
                    mark_history(ax, story)
                if key == "intermediate_values":
                    _drop_long_legend(ax)
            fig = _figure(ax)
            fig.set_size_inches(11 if key == "parallel_coordinate" else 8, 5)
            _save(fig, path)
            plt.close(fig)
        except (ValueError, RuntimeError) as e:  # e.g. importances when no parameter varies
            notes.append(f"{title}: skipped ({first_line(e)})")
            plt.close("all")
            continue
        written.append(path)
        if key == "optimization_history":
            what += history_caption(story)
        shown.append((path.name, title, what))
    summary = out_dir / "summary.md"
    _atomic_text(summary, _summary(study, trials, completed, story, shown, notes))
    written.append(summary)
    return written


MAX_LEGEND = 20  # entries; Optuna's per-epoch plot has one per trial
MAX_LINES = 500  # trials in Optuna's per-epoch plot; more are drawn as one collection of lines


def _intermediate_values(study: optuna.Study) -> Any:
    """Optuna's per-epoch plot, or for a study of more than MAX_LINES such trials the same plot
    drawn as one collection of lines (Optuna draws a line, and a legend entry, per trial: 20
    seconds for 10,000 trials)."""
    from optuna.visualization import matplotlib as vis

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    curves = [
        sorted(t.intermediate_values.items())
        for t in study.get_trials(deepcopy=False, states=states)
        if t.intermediate_values
    ]
    if len(curves) <= MAX_LINES:
        return vis.plot_intermediate_values(study)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    plt.style.use("ggplot")  # as Optuna's
    _, ax = plt.subplots(tight_layout=True)
    ax.set_title(f"Intermediate Values Plot ({len(curves)} trials)")
    ax.set_xlabel("Step")
    ax.set_ylabel("Intermediate Value")
    ax.add_collection(LineCollection(curves, colors="tab:blue", alpha=0.15, linewidths=0.8))
    ax.autoscale()
    return ax


def _drop_long_legend(ax: Any) -> None:
    """Remove a legend of more than MAX_LEGEND entries: one per trial names nothing a reader can
    find among hundreds of lines, and laying out 10,000 entries took matplotlib minutes."""
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) > MAX_LEGEND:
        legend.remove()


def _accuracy(t: optuna.trial.FrozenTrial) -> float:
    return float(t.values[0])


def _most_important(study: optuna.Study, completed: int, two: bool, n: int = 8) -> list[str] | None:
    """The ``n`` most important parameters (all of them when importances cannot be computed):
    a parallel-coordinate plot of 18 axes is unreadable."""
    if completed < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, target=_accuracy if two else None
            )
    except (ValueError, RuntimeError):
        return None
    return list(importances)[:n] or None


def _figure(ax: Any) -> Any:
    """The figure behind what a plot function returned (one Axes, or an array of them)."""
    if hasattr(ax, "figure"):
        return ax.figure
    return ax.flat[0].figure


def _save(fig: Any, path: Path) -> None:
    try:
        with atomic_write(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    except OSError as e:
        raise HpsearchError(f"cannot write {path}: {e.strerror or e}") from None


def _atomic_text(path: Path, text: str) -> None:
    try:
        with atomic_write(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise HpsearchError(f"cannot write {path}: {e.strerror or e}") from None


def _summary(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    completed: list[optuna.trial.FrozenTrial],
    story: Story,
    shown: list[tuple[str, str, str]],
    notes: list[str],
) -> str:
    states = Counter(t.state for t in trials)
    counts = ", ".join(
        f"{states.get(s, 0)} {s.name.lower()}"
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    )
    best = completed[0] if completed else None
    lines = [f"# Study `{study.study_name}`", "", *first_lines(story, best)]
    lines += [f"{len(trials)} trials: {counts}.", "", *confirm_section(story)]
    if best is not None:
        chosen, whose = best, "the best trial"
        if story.winner is not None:
            chosen, whose = story.winner.trial, "the confirmed winner"
        lines += [
            f"Parameters of trial {chosen.number} ({whose}):",
            "",
            "| parameter | value |",
            "|---|---|",
            *(f"| `{k}` | {v} |" for k, v in chosen.params.items()),
            "",
            "Top trials:",
            "",
            "| trial | val_accuracy | epochs | seconds |",
            "|---|---|---|---|",
        ]
        for t in completed[:10]:
            secs = t.duration.total_seconds() if t.duration else float("nan")
            lines.append(
                f"| {t.number}{trial_mark(story, t)} | {t.values[0]:.4f} "
                f"| {t.user_attrs.get(EPOCHS_RUN_ATTR, '')} | {secs:.1f} |"
            )
        lines.append("")
    else:
        lines += ["No completed trial yet.", ""]
    for name, title, what in shown:
        lines += [f"## {title}", "", f"{what[0].upper()}{what[1:]}.", "", f"![{title}]({name})", ""]
    if notes:
        lines += ["## Not plotted", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)
