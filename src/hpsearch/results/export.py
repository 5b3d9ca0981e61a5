"""A checkpoint as a deployable file: TorchScript or ONNX with the preprocessing built in.

The exported module takes a float batch ``(B, 3, S, S)`` of RGB values in [0, 1] at the study's
image size ``S`` and returns ``(B, classes)`` logits; ImageNet normalisation happens inside.
The class names travel with the file: TorchScript keeps them as the module attributes
``classes`` and ``image_size`` and in the extra file ``hpsearch.json``; ONNX keeps that JSON in
the model's metadata (key ``hpsearch``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hpsearch.engine.infer import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.storage.checkpoint import Checkpoint

if TYPE_CHECKING:
    from torch import Tensor

FORMATS = ("torchscript", "onnx")
META_NAME = "hpsearch.json"


class Deployable(nn.Module):
    """RGB in [0, 1] -> normalise -> the trained network -> logits."""

    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read postponed annotations
        mean: Tensor  # (1, 3, 1, 1) buffers
        std: Tensor

    def __init__(self, model: nn.Module, classes: list[str], image_size: int) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.classes = classes
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) in [0, 1] -> (B, K)
        out: torch.Tensor = self.model((x - self.mean) / self.std)
        return out


def metadata(ckpt: Checkpoint) -> dict[str, Any]:
    s = ckpt.image_size
    return {
        "classes": list(ckpt.classes),
        "image_size": s,
        "input": f"float32 (B, 3, {s}, {s}) RGB in [0, 1]",
        "output": f"float32 (B, {len(ckpt.classes)}) logits, in the order of classes",
        "study": ckpt.study,
        "trial": ckpt.trial,
        "val_accuracy": ckpt.value,
        "params": ckpt.params,
    }


def export(ckpt: Checkpoint, fmt: str, output: Path) -> None:
    """Write ``ckpt``'s model to ``output`` (through a temporary file, then a rename)."""
    if fmt not in FORMATS:
        raise HpsearchError(f"--format: expected torchscript or onnx, got {fmt!r}")
    if not output.parent.is_dir():
        raise HpsearchError(f"--output {output}: directory {output.parent} does not exist")
    module = Deployable(ckpt.model(), list(ckpt.classes), ckpt.image_size).eval()
    meta = json.dumps(metadata(ckpt))
    try:
        with atomic_write(output) as tmp:
            # torch reports a file it cannot open as a RuntimeError; opening it here first turns
            # a read-only or full directory into the OSError below, before any work is done
            tmp.touch()
            if fmt == "torchscript":
                _torchscript(module, meta, tmp)
            else:
                _onnx(module, meta, tmp, ckpt.image_size)
    except OSError as e:
        raise HpsearchError(f"--output {output}: cannot write: {e.strerror or e}") from None


def _torchscript(module: Deployable, meta: str, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still used
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path), _extra_files={META_NAME: meta})


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx(module: Deployable, meta: str, path: Path, size: int) -> None:
    if not onnx_available():
        raise HpsearchError(
            "--format onnx needs the onnx and onnxscript packages: "
            "pip install 'hpsearch[onnx]' (or pip install onnx onnxscript)"
        )
    import logging

    import onnx

    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    assert program is not None
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "hpsearch", meta
    onnx.save(model, str(path))
