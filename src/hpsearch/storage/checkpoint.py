"""Checkpoints of the best trials, kept as Optuna artifacts: save the top K, find, load safely.

When a trial finishes among the study's best ``search.keep_checkpoints`` completed trials, its
weights (``state_dict``), parameters, architecture, class names and the resolved study config are
saved with ``torch.save`` and uploaded with ``optuna.artifacts.upload_artifact`` while the trial
is still running, so the dashboard lists the file on the trial's page; the trial's user attribute
``checkpoint`` holds the artifact id. Trials pushed out of the top K lose their file (their
attribute stays: a finished trial cannot be changed). Files are written to a temporary name and
renamed, so a full disk never leaves a truncated checkpoint that a later command would trust.
Loading uses ``torch.load(..., weights_only=True)`` and refuses a checkpoint whose recorded
architecture is not the one its parameters build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from hpsearch.config import MAX_IMAGE_SIZE, StudyConfig, config_from_dict
from hpsearch.engine.model import build_model
from hpsearch.engine.spec import ArchSpec
from hpsearch.errors import first_line
from hpsearch.space import params_source, sample_values, to_trial_spec
from hpsearch.storage.artifacts import (
    AtomicArtifactStore,
    CheckpointError,
    checkpoint_path,
    has_our_checkpoint,
)
from hpsearch.storage.state import CHECKPOINT_ATTR, CHECKPOINT_ERROR_ATTR, KEPT_ATTR, fresh_trials
from hpsearch.storage.study import is_feasible

log = logging.getLogger(__name__)

FORMAT = "hpsearch-checkpoint/1"


def checkpoint_blob(
    trial_number: int,
    study_name: str,
    value: float,
    params: Mapping[str, Any],
    arch: ArchSpec,
    model: nn.Module,
    classes: Sequence[str],
    image_size: int,
    config: Mapping[str, Any],
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """What a checkpoint file holds: plain types and CPU tensors only (``weights_only`` loads)."""
    return {
        "format": FORMAT,
        "study": study_name,
        "trial": trial_number,
        "value": float(value),
        "params": dict(params),
        "arch": asdict(arch),
        "classes": list(classes),
        "image_size": int(image_size),
        "config": json.dumps(config),
        "versions": dict(versions),
        # contiguous: channels_last weights are saved in the default layout
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is at least as accurate and no slower (smaller), and better in one of the two."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


class CheckpointKeeper:
    """Saves a finishing trial's model when it ranks among the K best completed trials, and
    removes the files of trials that fall out (ranked by value, the earlier trial first on ties).
    """

    def __init__(
        self,
        store_dir: Path,
        keep: int,
        cfg: StudyConfig,
        classes: Sequence[str],
        image_size: int,
        versions: Mapping[str, str],
    ) -> None:
        self.store = AtomicArtifactStore(store_dir)
        self.keep = keep
        self.cfg = cfg
        self.classes = tuple(classes)
        self.image_size = image_size
        self.versions = dict(versions)

    def offer(
        self,
        trial: optuna.Trial,
        model: nn.Module,
        arch: ArchSpec,
        values: float | tuple[float, float],
    ) -> bool:
        """Called by the objective with the trained model and the trial's value (or its two
        values), before the trial is told COMPLETE.

        Returns whether a checkpoint was saved. A failure to write (a full disk) is logged and
        recorded in the trial's ``checkpoint_error`` attribute; the trial still completes.
        """
        vals = (values,) if isinstance(values, float | int) else tuple(values)
        done = self._completed(trial.study)
        top = self._top(done, (vals, trial.number))
        saved = trial.number in top and self._save(trial, model, arch, vals[0])
        self._evict(trial.study, done, top, also_kept=[trial.number] if saved else [])
        return saved

    def settle(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An ``optimize`` callback, run once the trial is COMPLETE: evict again.

        Two workers finishing together each rank the other's trial as still running, so both
        can keep a file and the study holds K + 1 until a later trial evicts one. Whichever of
        the two settles last sees both complete and removes the extra file.
        """
        if trial.state == TrialState.COMPLETE:
            done = self._completed(study)
            self._evict(study, done, self._top(done, None), also_kept=[])

    def _completed(self, study: optuna.Study) -> list[FrozenTrial]:
        return [
            t
            for t in fresh_trials(study)
            if t.state == TrialState.COMPLETE and t.values and is_feasible(t)
        ]

    def _top(
        self, done: list[FrozenTrial], finishing: tuple[tuple[float, ...], int] | None
    ) -> list[int]:
        """The trials to keep a file for, best first: the K most accurate among the completed
        ones (and the one finishing, if any), the earlier trial first on ties; in a study with
        two objectives, every trial on the Pareto front (accuracy up, the second one down)."""
        points = [(tuple(float(v) for v in t.values), t.number) for t in done if t.values]
        points += [finishing] if finishing is not None else []
        by_accuracy = sorted(points, key=lambda p: (-p[0][0], *p[0][1:], p[1]))
        if len(self.cfg.search.objectives) < 2:
            return [n for _, n in by_accuracy[: self.keep]]
        return [n for v, n in by_accuracy if not any(_dominates(w, v) for w, _ in points)]

    def _evict(
        self, study: optuna.Study, done: list[FrozenTrial], top: list[int], also_kept: list[int]
    ) -> None:
        with_file = {t.number for t in done if has_our_checkpoint(t)}
        for t in done:
            if t.number not in top and t.number in with_file:
                self.discard(str(t.user_attrs[CHECKPOINT_ATTR]))
        with_file.update(also_kept)
        # what the dashboard shows on the study's page (a finished trial cannot be changed, so
        # a removed checkpoint stays listed on its trial's page)
        study.set_user_attr(KEPT_ATTR, [n for n in top if n in with_file])

    def _save(self, trial: optuna.Trial, model: nn.Module, arch: ArchSpec, value: float) -> bool:
        blob = checkpoint_blob(
            trial.number,
            trial.study.study_name,
            value,
            trial.params,
            arch,
            model,
            self.classes,
            self.image_size,
            self.cfg.to_dict(),
            self.versions,
        )
        try:
            self.store.base_path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".upload-", dir=self.store.base_path) as tmp:
                path = Path(tmp) / f"trial-{trial.number}-checkpoint.pt"
                save_file(blob, path)
                artifact_id = upload_artifact(
                    artifact_store=self.store,
                    file_path=str(path),
                    study_or_trial=trial,
                    mimetype="application/octet-stream",
                )
        except (OSError, RuntimeError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            reason = f"checkpoint not saved in {self.store.base_path}: {detail}"
            log.warning("trial %d: %s", trial.number, reason)
            trial.set_user_attr(CHECKPOINT_ERROR_ATTR, reason)
            return False
        trial.set_user_attr(CHECKPOINT_ATTR, artifact_id)
        return True

    def discard(self, artifact_id: str) -> None:
        # already gone: another worker evicted it first
        with contextlib.suppress(ArtifactNotFound, OSError, CheckpointError, ValueError):
            self.store.remove(artifact_id)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model's weights and everything needed to rebuild and use it."""

    study: str
    trial: int
    value: float
    params: dict[str, Any]
    arch: ArchSpec
    classes: tuple[str, ...]
    image_size: int
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path
    versions: dict[str, str] = field(default_factory=dict)  # of the packages that trained it
    # a confirm run's model (hpsearch confirm): {"run": its index from 0, "seed": its seed}
    confirm: dict[str, Any] | None = None

    def model(self) -> nn.Module:
        """The trained network on the CPU, in eval mode."""
        net = build_model(self.arch, len(self.classes), self.image_size)
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            detail = first_line(" ".join(str(e).split()))  # the keys are on later lines
            raise CheckpointError(
                f"checkpoint {self.path} does not fit the network of trial {self.trial}: {detail}"
            ) from None
        return net.eval()


def load_checkpoint(
    trial: FrozenTrial, store_dir: Path, keep_hint: str = "", path: Path | None = None
) -> Checkpoint:
    """Load and verify ``trial``'s checkpoint (``weights_only=True``): the one its ``checkpoint``
    attribute names, or the file ``path`` (e.g. the confirmed winner's)."""
    if path is None:
        path = checkpoint_path(trial, store_dir, keep_hint)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hpsearch checkpoint ({FORMAT})")
    check_contents(blob, path)
    if blob["trial"] != trial.number or blob["params"] != trial.params:
        raise CheckpointError(
            f"checkpoint {path} records trial {blob['trial']}, not trial {trial.number} "
            "with its parameters; refusing to load it"
        )
    return checkpoint_from_blob(blob, path)


# what each field of a checkpoint holds (checkpoint_blob); checked on every load
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "study": str,
    "trial": int,
    "value": (int, float),
    "params": dict,
    "arch": dict,
    "classes": list,
    "image_size": int,
    "config": str,
    "state_dict": dict,
}


def check_contents(blob: Mapping[str, Any], path: Path) -> None:
    """Every field a checkpoint needs is there and of its type, the architecture has exactly
    ArchSpec's fields, the config is JSON, the weights are tensors with no NaN or infinity: else
    a one-line CheckpointError naming the field (a file with the right format tag and broken
    contents was a traceback in predict, and NaN weights predicted "cat nan")."""
    where = f"checkpoint {path}"
    for name, kind in _FIELDS.items():
        value = blob.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            got = "nothing" if value is None else type(value).__name__
            raise CheckpointError(f"{where} is broken: its {name!r} is {got}; refusing to load it")
    trial = blob["trial"]
    arch_fields = {f.name for f in fields(ArchSpec)}
    if set(blob["arch"]) != arch_fields:
        odd = sorted(set(blob["arch"]) ^ arch_fields)
        raise CheckpointError(
            f"{where} (trial {trial}) is broken: its architecture has the wrong fields "
            f"({', '.join(odd)}); refusing to load it"
        )
    size = blob["image_size"]
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise CheckpointError(f"{where} (trial {trial}) is broken: image_size {size}")
    classes = blob["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise CheckpointError(
            f"{where} (trial {trial}) is broken: classes must be two or more names"
        )
    try:
        config = json.loads(blob["config"])
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} (trial {trial}) is broken: its config is not JSON")
    for key, tensor in blob["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{where} (trial {trial}) is broken: {key} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{where}: trial {trial}'s weights hold NaN or infinity ({key}); the trial "
                "diverged, refusing to load it"
            )


def checkpoint_from_blob(blob: Mapping[str, Any], path: Path) -> Checkpoint:
    """A :class:`Checkpoint` from what :func:`checkpoint_blob` makes, after checking its
    contents (:func:`check_contents`) and that its recorded architecture is the one its
    parameters build."""
    check_contents(blob, path)
    cfg = config_from_dict(json.loads(blob["config"]), f"checkpoint {path}")
    values = sample_values(cfg.search, params_source(blob["params"], f"checkpoint {path}"))
    expected = to_trial_spec(values, cfg, 0).arch
    recorded = ArchSpec(**{k: _tuple(v) for k, v in blob["arch"].items()})
    if recorded != expected:
        raise CheckpointError(
            f"checkpoint {path} records architecture {_short(recorded)} but trial "
            f"{blob['trial']}'s parameters build {_short(expected)}; refusing to load it"
        )
    return Checkpoint(
        study=str(blob["study"]),
        trial=int(blob["trial"]),
        value=float(blob["value"]),
        params=dict(blob["params"]),
        arch=recorded,
        classes=tuple(blob["classes"]),
        image_size=int(blob["image_size"]),
        config=json.loads(blob["config"]),
        state_dict=dict(blob["state_dict"]),
        path=path,
        versions=dict(versions) if isinstance(versions := blob.get("versions"), dict) else {},
        confirm=dict(confirm) if isinstance(confirm := blob.get("confirm"), dict) else None,
    )


def save_file(blob: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write is the OSError that caused
    it ("No space left on device"): given a path, torch says only "[enforce fail at
    inline_container.cc:672] . unexpected pos"."""
    with open(path, "wb") as f:
        try:
            torch.save(blob, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def save_blob(store_dir: Path, blob: Mapping[str, Any], name: str) -> str:
    """Write a checkpoint into the artifact store (atomically) without attaching it to a trial
    (``hpsearch confirm`` keeps the models of finished trials this way); returns its artifact
    id. An unwritable store is a CheckpointError."""
    store = AtomicArtifactStore(store_dir)
    artifact_id = str(uuid.uuid4())
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".upload-", dir=store_dir) as tmp:
            path = Path(tmp) / name
            save_file(dict(blob), path)
            with open(path, "rb") as f:
                store.write(artifact_id, f)
    except (OSError, RuntimeError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise CheckpointError(f"checkpoint not saved in {store_dir}: {detail}") from None
    return artifact_id


def remove_artifact(store_dir: Path, artifact_id: str) -> None:
    """Remove a stored checkpoint; one already gone is not an error."""
    with contextlib.suppress(ArtifactNotFound, OSError, CheckpointError):
        AtomicArtifactStore(store_dir).remove(artifact_id)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _short(arch: ArchSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(arch).items())
