"""A trial's device memory, predicted without a GPU: the model's steps run on the ``meta`` device.

Tensors on the ``meta`` device have shapes and dtypes but no storage, so a training step and an
evaluation pass of any size cost nothing to run there. :class:`LiveBytes` watches every tensor
the operators create and counts the bytes alive at each moment; its peak over a step is what the
allocator must hold at once (activations saved for the backward pass, the max-pool indices
CUDA keeps as int64, temporaries, gradients as they appear). Weights, gradients and optimizer
state are counted from the parameter count.

On CUDA a trial trains under bf16 autocast: the meta step runs the network in bf16 (as autocast
runs convolutions and matrix products), with autocast's bf16 copies of the weights added, and
the fp32 weights, gradients and optimizer state beside them. On the CPU everything is fp32.

What the caching allocator reserves is more than what is live: it keeps a freed block for reuse,
so a worker holds the high-water marks of training (batch ``batch_size``) and of evaluation
(batch ``train.eval_batch_size``) at once, plus cuDNN's workspaces and rounding. The plan
(:attr:`TrialMemory.total`) therefore adds both peaks and a margin: a worst case, not a typical
case. ``tests/engine/test_memory.py`` checks the step's peak against glibc's allocator on the
CPU, where the same arithmetic runs in fp32.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hpsearch.engine.model import build_model, param_count
from hpsearch.engine.spec import OPTIMIZER_STATE, TrialSpec

WORKSPACE_BYTES = 256 * 2**20  # cuDNN's convolution workspaces (the autotuner may pick large ones)
ROUNDING = 0.10  # allocator block rounding and fragmentation, as a share of the two peaks
GIB = 2**30


class LiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the bytes of the storages that operators create while it is active, as they are
    created and freed; ``peak`` is the most that were alive at once. Storages made before it
    started (the weights, the data) are not counted."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._seen:  # a view of a storage already counted
            return
        self._seen.add(key)
        n = storage.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


@dataclass(frozen=True)
class TrialMemory:
    """The device memory one trial needs, in bytes, by part."""

    weights: int  # fp32 parameters
    gradients: int  # fp32 gradients: they stay allocated until the next step's zero_grad
    optimizer: int  # the optimizer's state (Adam: two buffers per parameter)
    cast_weights: int  # autocast's bf16 copies of the weights during a step (CUDA only)
    train_step: int  # the peak of one training step at the trial's batch: inputs, activations
    evaluation: int  # the peak of one evaluation pass at the study's eval_batch_size
    workspace: int  # cuDNN workspaces, allocator rounding and fragmentation

    @property
    def total(self) -> int:
        """The worst case a worker's caching allocator may hold for this trial."""
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.cast_weights
            + self.train_step
            + self.evaluation
            + self.workspace
        )

    def describe(self) -> str:
        """``7.9 GiB (weights+grads+optimizer 0.2, training step 3.1, evaluation 4.3, ...)``."""
        state = self.weights + self.gradients + self.optimizer + self.cast_weights
        return (
            f"{self.total / GIB:.1f} GiB (weights, gradients and optimizer {state / GIB:.1f}, "
            f"training step {self.train_step / GIB:.1f}, evaluation {self.evaluation / GIB:.1f}, "
            f"workspace {self.workspace / GIB:.1f})"
        )


def _step_peak(
    spec: TrialSpec, n_classes: int, image_size: int, dtype: torch.dtype, batch: int, train: bool
) -> int:
    """The peak of live bytes of one training step (train=True) or one evaluation batch, run on
    the meta device in ``dtype``, starting from the uint8 images the data holds on the device."""
    size = image_size
    with torch.device("meta"):
        model = build_model(spec.arch, n_classes, size).to(dtype)
        model = model.to(memory_format=torch.channels_last)
        images = torch.empty(batch, size, size, 3, dtype=torch.uint8)
        labels = torch.zeros(batch, dtype=torch.int64)
        scale = torch.empty(1, 3, 1, 1)
        shift = torch.empty(1, 3, 1, 1)
    model.train(train)
    counter = LiveBytes()
    with counter:
        x = torch.addcmul(shift, images.permute(0, 3, 1, 2).float(), scale)  # the Normalizer
        if train and (spec.crop_scale != (1.0, 1.0) or spec.flip):  # the crop's resample
            theta = torch.zeros(batch, 2, 3, device="meta")
            grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
            x = F.grid_sample(x, grid, align_corners=False)
        x = x.contiguous(memory_format=torch.channels_last).to(dtype)
        if train:
            loss = F.cross_entropy(model(x).float(), labels)
            loss.backward()  # type: ignore[no-untyped-call]
        else:
            with torch.no_grad():
                model(x).float()
    return counter.peak


def trial_memory(
    spec: TrialSpec, n_classes: int, image_size: int, eval_batch_size: int, device_type: str
) -> TrialMemory:
    """What ``spec`` needs on a ``device_type`` (``cuda``: bf16 autocast; ``cpu``: fp32) device
    when its data has ``n_classes`` classes at ``image_size`` and validation runs in batches of
    ``eval_batch_size``."""
    cuda = device_type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    params = param_count(spec.arch, n_classes, image_size)
    train = _step_peak(spec, n_classes, image_size, dtype, spec.batch_size, train=True)
    evaluation = _step_peak(spec, n_classes, image_size, dtype, eval_batch_size, train=False)
    return TrialMemory(
        weights=4 * params,
        gradients=4 * params,
        optimizer=4 * params * OPTIMIZER_STATE.get(spec.optim.optimizer, 2),
        cast_weights=2 * params if cuda else 0,
        train_step=train,
        evaluation=evaluation,
        workspace=(WORKSPACE_BYTES if cuda else 0) + int(ROUNDING * (train + evaluation)),
    )
