"""Using a checkpoint: predict labels for image files, evaluate on an ImageFolder directory.

Images are read exactly like the validation images a trial was scored on: decoded with
``engine.images.decode_checked`` (RGB, resized to the study's image size), a directory through
``data``'s decode-once cache, and run through ``engine.infer`` (normalisation, batches and the
precision policy), the path the trial's own validation took and ``hpsearch serve`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpsearch.engine import infer
from hpsearch.engine.data import load_split
from hpsearch.engine.images import decode_checked, list_split
from hpsearch.engine.infer import BATCH_SIZE
from hpsearch.engine.spec import DataConfig
from hpsearch.errors import DataError, first_line
from hpsearch.files import what_is
from hpsearch.storage.checkpoint import Checkpoint


def logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = BATCH_SIZE
) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, classes) float logits on the CPU: ``infer.logits`` of the model
    prepared for ``device``."""
    return infer.logits(infer.prepare(model, device), images, device, batch_size).cpu()


def read_images(paths: Sequence[str], size: int) -> torch.Tensor:
    """Decode files into (N, size, size, 3) uint8 under the decode policy ``serve`` applies
    (``engine.images.decode_checked``: an image over the decompression-bomb limit is refused,
    with no warning from Pillow); the first unreadable one is a DataError."""
    arrays = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"image {p} {what_is(path, 'an image file')}")
        try:
            arrays.append(decode_checked(path, p, size))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read image {p}: {first_line(e)}") from None
    return torch.from_numpy(np.stack(arrays))


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probability: float


def predict(ckpt: Checkpoint, paths: Sequence[str], device: torch.device) -> list[Prediction]:
    """The most probable class of each image, with its softmax probability."""
    model = infer.prepare(ckpt.model(), device)
    probs = infer.probabilities(model, read_images(paths, ckpt.image_size), device).cpu()
    best = probs.argmax(1)
    return [
        Prediction(p, ckpt.classes[int(k)], float(probs[i, k]))
        for i, (p, k) in enumerate(zip(paths, best, strict=True))
    ]


@dataclass(frozen=True)
class Evaluation:
    split_dir: Path
    classes: tuple[str, ...]  # the model's classes: rows and columns of ``confusion``
    confusion: list[list[int]]  # [true][predicted] counts

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        right = sum(self.confusion[i][i] for i in range(len(self.classes)))
        return right / max(self.total, 1)

    def per_class(self) -> list[tuple[str, float, int]]:
        """(class, accuracy, images) for the classes present in the directory."""
        out = []
        for i, name in enumerate(self.classes):
            n = sum(self.confusion[i])
            if n:
                out.append((name, self.confusion[i][i] / n, n))
        return out

    def text(self) -> str:
        width = max(8, *(len(c) for c in self.classes))
        lines = [f"accuracy {self.accuracy:.4f} on {self.total} images in {self.split_dir}"]
        lines.append(
            "per class: "
            + ", ".join(f"{name} {acc:.4f} ({n})" for name, acc, n in self.per_class())
        )
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        lines.append(" " * width + "".join(f" {c:>{width}}" for c in self.classes))
        for name, row in zip(self.classes, self.confusion, strict=True):
            lines.append(f"{name:>{width}}" + "".join(f" {n:>{width}}" for n in row))
        return "\n".join(lines)


def imagefolder_split(data_dir: Path) -> Path:
    """``DIR/val`` when it is there (a data-set root), else ``DIR`` itself (``DIR/<class>/``)."""
    if not data_dir.is_dir():
        raise DataError(
            f"--data {data_dir} is not a directory (expected DIR/<class>/<image> or "
            "DIR/val/<class>/<image>)"
        )
    val = data_dir / "val"
    return val if val.is_dir() else data_dir


def evaluate(ckpt: Checkpoint, data_dir: Path, device: torch.device) -> Evaluation:
    """Accuracy, per-class accuracy and the confusion matrix on an ImageFolder directory."""
    split_dir = imagefolder_split(data_dir.expanduser().resolve())
    try:
        folder_classes, _ = list_split(split_dir)  # the layout check
    except DataError as e:
        raise DataError(
            f"--data {data_dir}: not an ImageFolder directory (DIR/<class>/<image> or "
            f"DIR/val/<class>/<image>): {e}"
        ) from None
    unknown = [c for c in folder_classes if c not in ckpt.classes]
    if unknown:
        raise DataError(
            f"{split_dir}: class folder(s) {', '.join(unknown)} are not classes of this model "
            f"({', '.join(ckpt.classes)})"
        )
    cfg = DataConfig(split_dir.parent, ckpt.image_size, None, None)
    images = load_split(cfg, split_dir.name)  # decoded once, cached like training data
    to_model = torch.tensor([ckpt.classes.index(c) for c in images.classes])
    truth = to_model[images.labels]
    predicted = logits(ckpt.model(), images.images, device).argmax(1)
    k = len(ckpt.classes)
    counts = torch.bincount(truth * k + predicted, minlength=k * k).view(k, k)
    return Evaluation(split_dir, ckpt.classes, counts.tolist())
