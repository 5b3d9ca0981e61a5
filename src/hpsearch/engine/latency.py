"""A trained model's inference time per image at batch 1: what ``search.constraints.max_latency_ms``
judges. Measured as ``hpsearch serve`` runs a model (evaluation mode, ``torch.inference_mode``,
``engine.infer``'s precision: channels_last, bf16 autocast on CUDA), on a copy, so the trial's
model is left as it was."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from hpsearch.engine.infer import autocast, prepare

WARMUP = 5  # the first calls allocate and pick kernels
REPEATS = 30


def latency_ms(model: nn.Module, image_size: int, device: torch.device) -> float:
    """The median of ``REPEATS`` timed forward passes of one image on ``device``, in ms.

    On the CPU it uses the process's threads (``torch.get_num_threads()``), which the caller
    records beside the figure; other processes training on the same cores make it larger.
    """
    m = prepare(copy.deepcopy(model).to(dtype=torch.float32), device)
    x = torch.rand(1, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    times: list[float] = []
    with torch.inference_mode(), autocast(device):
        for i in range(WARMUP + REPEATS):
            start = time.perf_counter()
            m(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    del m
    return 1000.0 * statistics.median(times)
