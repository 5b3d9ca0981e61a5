"""``train.cuda_graphs``: the training step captured once as a CUDA graph and replayed.

A training step of these small CNNs is launch-bound on a fast GPU: 100-130 small kernels, each
launched from Python. Replaying a captured graph launches them all at once. Everything the step
does is captured (gathering the batch, normalising, cropping, forward, backward, the optimizer's
update, the epoch's loss and accuracy totals), so a step is two small copies into the graph's
static inputs (the batch's indices and crop matrices) and one replay.

How it stays the same training as the eager step:

- The shapes are fixed: every step has ``batch_size`` images (``fit`` drops the last partial
  batch: ``steps = n // batch_size``).
- The first :data:`WARMUP_STEPS` steps run eagerly on the capture's side stream (real steps of
  the trial, not extra ones): they create the optimizer's state, cuBLAS's workspace and cuDNN's
  algorithm choices, which cannot be created inside a capture.
- The optimizer is built ``capturable`` (Adam, AdamW, RMSprop keep their step count on the GPU;
  fused SGD needs nothing). The learning rate is a constant inside a captured graph, so the step
  is captured again whenever the schedule changes it (at most once an epoch; the previous graph
  and its memory are released first).
- Dropout draws from the CUDA generator, which graphs advance on every replay.

This uses ``torch.cuda.graph`` directly rather than ``torch.compile(mode="reduce-overhead")``:
every trial is a new architecture, and compiling each one would cost tens of seconds a trial
(minutes on a loaded host), more than a short trial saves; a capture costs one step.

Off by default (``train.cuda_graphs: false``) until the GPU kit has measured it. On a device other
than CUDA, ``fit`` runs the eager step and says so once per process.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from hpsearch.engine.data import DeviceData
from hpsearch.engine.step import TrainStep

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's own examples use 3)

_said: set[str] = set()


def use_graphs(requested: bool, device: torch.device) -> bool:
    """Whether ``fit`` captures its step: ``train.cuda_graphs`` on a CUDA device. Asked for on
    another device, it falls back to the eager step and says so once per process."""
    if not requested:
        return False
    if device.type == "cuda":
        return True
    if device.type not in _said:
        _said.add(device.type)
        log.warning(
            "train.cuda_graphs: CUDA graphs need a CUDA device; on %s every training step runs "
            "eagerly",
            device.type,
        )
    return False


class Recorder(Protocol):
    """What captures and replays a step: :class:`CudaGraph` on CUDA; tests simulate it on the
    CPU."""

    def warm(self, body: Callable[[], None]) -> None: ...

    def capture(self, body: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraph:
    """``torch.cuda.CUDAGraph`` with one side stream for the warm-up and the captures."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self.graph: torch.cuda.CUDAGraph | None = None

    def warm(self, body: Callable[[], None]) -> None:
        """Run ``body`` eagerly on the side stream, ordered after the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            body()
        current.wait_stream(self.stream)

    def capture(self, body: Callable[[], None]) -> None:
        """Record ``body`` (nothing runs); the previous graph, if any, is dropped first, once its
        replays have finished."""
        torch.cuda.synchronize(self.device)
        self.graph = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            body()
        self.graph = graph

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()


class GraphedStep(TrainStep):
    """The training step replayed from a graph, with static inputs copied in before each
    replay; see the module docstring."""

    graphed = True

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        data: DeviceData,
        batch_size: int,
        crop: bool,
        recorder: Recorder | None = None,
        warmup: int = WARMUP_STEPS,
    ) -> None:
        super().__init__(model, opt, data)
        dev = data.device
        self.recorder: Recorder = recorder if recorder is not None else CudaGraph(dev)
        self.static_idx = torch.zeros(batch_size, dtype=torch.int64, device=dev)
        self.static_theta = torch.zeros(batch_size, 2, 3, device=dev) if crop else None
        self.warmup = warmup
        self.warmed = 0
        self.captured_lr: float | None = None
        self.captures = 0

    def _body(self) -> None:
        self.run(self.static_idx, self.static_theta)

    def __call__(self, idx: torch.Tensor, theta: torch.Tensor | None, lr: float) -> None:
        self.static_idx.copy_(idx)
        if self.static_theta is not None:
            assert theta is not None, "a cropping step needs its crop matrices"
            self.static_theta.copy_(theta)
        if self.warmed < self.warmup:
            with warnings.catch_warnings():
                # capturable optimizers warn when they step outside a capture: here on purpose
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                self.recorder.warm(self._body)
            self.warmed += 1
            return
        if self.captured_lr != lr:
            self.opt.zero_grad(set_to_none=True)  # the capture allocates the gradients
            self.recorder.capture(self._body)
            self.captured_lr = lr
            self.captures += 1
        self.recorder.replay()
