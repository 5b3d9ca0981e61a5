"""Where checkpoints live: Optuna's filesystem artifact store (written atomically), the trial
attribute that links a trial to its checkpoint, and finding a trial's file. No torch here, so
the commands that only read the study start fast."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial

from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.storage.state import CHECKPOINT_ATTR, CHECKPOINT_ERROR_ATTR

_SAFE_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]*$")
# upload_artifact names every file with a uuid4; a "checkpoint" attribute that is not one was
# written by someone else (a plain-Optuna study's own path or URL) and is never ours to delete
_OUR_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def has_our_checkpoint(trial: FrozenTrial) -> bool:
    """Whether ``trial``'s ``checkpoint`` attribute names an hpsearch checkpoint."""
    value = trial.user_attrs.get(CHECKPOINT_ATTR)
    return isinstance(value, str) and _OUR_ID.match(value) is not None


class CheckpointError(HpsearchError):
    """A checkpoint that is missing, unreadable or does not match its trial."""


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's filesystem artifact store, but a write lands under a temporary name first and is
    renamed into place, so readers (and later runs) never see a partial file."""

    def __init__(self, base_path: Path) -> None:
        super().__init__(base_path)
        self.base_path = base_path

    def path_of(self, artifact_id: str) -> Path:
        if not _SAFE_ID.match(artifact_id):
            raise CheckpointError(f"invalid artifact id {artifact_id!r}")
        return self.base_path / artifact_id

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self.path_of(artifact_id)
        self.base_path.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            shutil.copyfileobj(content_body, f)
            f.flush()
            os.fsync(f.fileno())


def checkpoint_path(trial: FrozenTrial, store_dir: Path, keep_hint: str = "") -> Path:
    """The file of ``trial``'s checkpoint in the store, or a CheckpointError saying why not."""
    artifact_id = trial.user_attrs.get(CHECKPOINT_ATTR)
    if not isinstance(artifact_id, str):
        why = trial.user_attrs.get(CHECKPOINT_ERROR_ATTR)
        if not why and any(v > 0 for v in trial.constraints.values()):
            why = "it is over the deployment budget (search.constraints), so none was kept"
        raise CheckpointError(
            f"trial {trial.number} has no checkpoint"
            + (f" ({why})" if why else " (it never ranked among the kept best trials)")
            + keep_hint
        )
    if not has_our_checkpoint(trial):
        raise CheckpointError(
            f"trial {trial.number} has no hpsearch checkpoint: its checkpoint attribute "
            f"{artifact_id!r} was not written by hpsearch"
        )
    path = AtomicArtifactStore(store_dir).path_of(artifact_id)
    if not path.is_file():
        raise CheckpointError(
            f"the checkpoint of trial {trial.number} is not in {store_dir} (artifact "
            f"{artifact_id}): it fell out of the kept best trials, or the artifacts are "
            f"elsewhere (--artifacts DIR){keep_hint}"
        )
    return path
