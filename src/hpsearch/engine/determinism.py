"""``train.deterministic``: whether a re-run of a trial repeats its numbers exactly on CUDA.

What repeats where, for the same spec, seed, data, device model and library versions:

- **CPU**: always exactly (the same kernels run in the same order).
- **CUDA, ``train.deterministic: false``** (the default): not exactly. cuDNN's benchmark mode
  times several convolution algorithms and keeps the fastest, which may differ from run to run,
  and some backward kernels (and cuBLAS with its default workspaces) accumulate in a varying order;
  a re-run lands close, not on the same digits.
- **CUDA, ``train.deterministic: true``**: exactly, at some speed cost: benchmark mode is off,
  ``torch.use_deterministic_algorithms(True)`` makes PyTorch pick deterministic kernels (and raise
  on an op that has none; the model family uses none), and cuBLAS gets
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8``.

**Where the variable must be set.** PyTorch reads ``CUBLAS_WORKSPACE_CONFIG`` when a process first
uses cuBLAS and keeps that workspace for the rest of the process, so :func:`before_cuda` must run
before the process's first CUDA work. hpsearch calls it once a training command has read its
study file: in ``run`` before the GPU probe and the workers it starts (which inherit the
variable), in ``search.run.device_for`` (``worker``, ``train``) and in ``confirm``'s worker, each
before the data goes to the GPU. ``fit`` calls it again, and says once when it comes too late
(CUDA started without the variable), which only happens to a program that used CUDA before
calling ``fit``: set the variable in its environment then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"
_DETERMINISTIC_VALUES = (":4096:8", ":16:8")  # the two cuBLAS documents as deterministic

_late_said = False


def before_cuda(deterministic: bool) -> None:
    """With ``deterministic``, set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in this process's
    environment (child processes inherit it), unless it already holds a deterministic value.
    Call it before the process's first CUDA work; without ``deterministic`` it does nothing.
    It imports no torch, so a command can call it before its slow imports."""
    global _late_said
    if not deterministic or os.environ.get(CUBLAS_VARIABLE) in _DETERMINISTIC_VALUES:
        return
    torch = sys.modules.get("torch")  # not imported yet: CUDA has not started
    if torch is not None and torch.cuda.is_initialized() and not _late_said:
        _late_said = True
        log.warning(
            "train.deterministic: CUDA started in this process before %s was set, so cuBLAS "
            "may still vary; set %s=%s in the environment to be sure",
            CUBLAS_VARIABLE,
            CUBLAS_VARIABLE,
            CUBLAS_DETERMINISTIC,
        )
    os.environ[CUBLAS_VARIABLE] = CUBLAS_DETERMINISTIC


@contextlib.contextmanager
def mode(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Around one ``fit``: deterministic algorithms on or off, cuDNN benchmark mode on CUDA
    unless deterministic; both flags are process-wide and restored on exit."""
    import torch

    before_cuda(deterministic)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark = was_benchmark
