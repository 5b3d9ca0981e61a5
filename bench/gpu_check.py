"""The GPU acceptance kit: one command that proves hpsearch's GPU path and writes a report.

    python bench/gpu_check.py --out DIR [--device auto|cuda|cpu] [--tiny] [--data DIR]
        [--checks NAME,...] [--budget SECONDS] [--min-images-per-s RATE]

It runs ten checks, each in its own process with its own time limit, so that one that fails,
hangs or crashes never stops the others. Every check passes or fails on a condition it states in
the report beside its figures (``ok``, ``failed`` with a one-line reason), or is ``skipped`` with
why where the device cannot run it (only on the CPU: on CUDA a skip is a failure). The kit exits
0 when no check failed, 1 when one did (its last lines say which and why), 2 on bad input.
``DIR/report.md`` and ``DIR/report.json`` are rewritten after each check (a kit stopped half-way
still leaves a report), ``DIR/log.txt`` holds every child's output.

1. environment: torch, CUDA, cuDNN, the GPU's name and memory, Optuna and hpsearch versions; on
   CUDA it fails unless torch sees the GPU and it supports bf16;
2. throughput: the seed CNN at 128px (bf16 on CUDA), the rows of bench/throughput.py; fails unless
   every row ran and the engine row reached ``--min-images-per-s`` (default 20,000 on CUDA at full
   size, none on the CPU or with --tiny);
3. largest_trial: the largest trials the catdog space allows (hpsearch.search.gpu_plan), trained
   and evaluated at the study's eval_batch_size; fails if the peak the allocator held is above the
   plan (hpsearch.engine.memory.trial_memory), printed by part;
4. packing: aggregate images/s with K = 1, 2, 4, 8 training processes side by side
   (bench/packing.py); fails unless every K ran to the end;
5. trials_per_gpu: the K the probe picks for the trial packing measured (CUDA only); fails unless
   it is within one of the best measured K;
6. cuda_graphs: the batch-32 training step eager vs captured in a CUDA graph; fails if their
   losses disagree (on the CPU the eager step is timed and the check skipped);
7. search: a real smoke-sized ``hpsearch run --workers K`` on the device (a temp SQLite file),
   exact trial counts, and ``hpsearch predict`` loading the best checkpoint on the CPU;
8. auto_k: a real ``hpsearch run`` that picks K itself (no --workers, no --trials-per-gpu) under
   an inherited ``CUDA_VISIBLE_DEVICES`` naming the GPU by UUID, as a scheduler would (CUDA only);
9. out_of_memory: a trial made to run out of device memory fails with its reason, the memory it
   held is returned and the next trial runs (on the CPU: the host allocator);
10. gpu_tests: the suite's tests marked ``gpu`` (pytest -m gpu); on CUDA it fails unless every one
   ran and passed.

The data is an ImageFolder root (``--data``; default ``gpu-subset/`` made by bench/make_subset.py,
else ``$HPSEARCH_DATA``, else ``../shared/data/catdog``). Rows that need more images than it has
repeat it in memory. ``--tiny`` makes a tiny subset of it and shrinks every size, so that the
whole kit runs on a 2-core CPU in a few minutes (``--device cpu --tiny`` is what the test suite
runs). The checks' time limits add up to the budget (``--budget``, default 450 s, planned for one
H100; 900 s with --tiny, for a shared CPU): check i must end by the kit's start plus the sum of
the limits of checks 1..i, so time one check leaves over goes to the next and the kit ends within
its budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULT_MARK = "@@gpu_check result@@ "


@dataclass(frozen=True)
class Sizes:
    image_size: int
    row_steps: dict[str, int]  # bench/throughput.py rows -> timed optimizer steps
    largest_steps: int
    largest_batch: int | None  # cap on the largest trial's batch (None: the space's own)
    largest_eval_batch: int | None  # cap on its eval_batch_size (None: the study's own)
    packing_ks: tuple[int, ...]
    packing_steps: int
    graph_steps: int
    search_epochs: int | None  # None: the smoke study's own
    subset: tuple[int, int] | None  # (train, val) images of a subset made from --data first


FULL = Sizes(
    image_size=128,
    row_steps={"seed": 150, "tuned": 400, "engine": 2000, "bound_engine": 1000},
    largest_steps=20,
    largest_batch=None,
    largest_eval_batch=None,
    packing_ks=(1, 2, 4, 8),
    packing_steps=400,
    graph_steps=200,
    search_epochs=None,
    subset=None,
)
TINY = Sizes(
    image_size=32,
    row_steps={"seed": 6, "tuned": 6, "engine": 12, "bound_engine": 6},
    largest_steps=1,
    largest_batch=8,
    largest_eval_batch=32,
    packing_ks=(1, 2),
    packing_steps=6,
    graph_steps=8,
    search_epochs=1,
    subset=(96, 32),
)


@dataclass
class Ctx:
    """What a check knows: the resolved device, data, sizes and a scratch folder."""

    device: str  # cuda | cpu
    data: Path
    work: Path
    tiny: bool
    deadline: float  # time.time() by which the check must be done
    sizes: Sizes = field(default=FULL)
    min_rate: float | None = None  # --min-images-per-s as given (None: the default)
    prior: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier checks' figures

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self, reserve: float = 0.0) -> float:
        return max(5.0, self.deadline - time.time() - reserve)


def result(
    status: str,
    summary: str,
    md: Sequence[str] = (),
    figures: dict[str, Any] | None = None,
    reason: str | None = None,
    condition: str = "",
) -> dict[str, Any]:
    """A check's outcome: ``status`` ok | failed | skipped, the ``condition`` it was judged on
    (printed beside its figures), ``reason`` (why it failed or was skipped)."""
    return {
        "status": status,
        "reason": reason,
        "condition": condition,
        "summary": summary,
        "md": list(md),
        "figures": figures or {},
    }


def judged(
    problems: Sequence[str],
    summary: str,
    md: Sequence[str],
    figures: dict[str, Any],
    condition: str,
) -> dict[str, Any]:
    """``ok`` when there are no ``problems``, else ``failed`` with them as the reason."""
    if problems:
        return result("failed", summary, md, figures, "; ".join(problems), condition)
    return result("ok", summary, md, figures, None, condition)


def one_line(e: BaseException | str) -> str:
    if isinstance(e, BaseException):
        text = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__
    return (e.strip().splitlines() or [""])[0][:300]


def run_sub(
    cmd: Sequence[str], timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, stdout and stderr merged; on timeout the whole group
    is killed and the code is None."""
    p = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out or ""
    except BaseException:  # Ctrl-C: take the whole group down with us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        raise


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def echo(text: str) -> None:
    """A child's sub-process output goes to the child's stderr, which the kit's log keeps."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def bench_module(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import importlib

    return importlib.import_module(name)


# ----------------------------------------------------------------------------- the checks


def cudnn_version() -> str:
    import torch

    cudnn = torch.backends.cudnn
    v = cudnn.version() if cudnn.is_available() else None  # type: ignore[no-untyped-call]
    if not v:
        return "-"
    if v >= 90000:  # cuDNN 9: major * 10000 + minor * 100 + patch
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def check_environment(c: Ctx) -> dict[str, Any]:
    from importlib import metadata

    import torch

    import hpsearch

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    rc, commit = run_sub(git, 10, REPO) if shutil.which("git") else (1, "")
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": ver("torchvision"),
        "cuda": (torch.version.cuda or "none")
        + ("" if torch.cuda.is_available() else " (what torch was built with; no GPU here)"),
        "cudnn": cudnn_version(),
        "optuna": ver("optuna"),
        "sqlalchemy": ver("sqlalchemy"),
        "hpsearch": hpsearch.__version__ + (f" (commit {commit.strip()})" if rc == 0 else ""),
        "cpu cores": os.cpu_count(),
        "device used": c.device,
        "data": f"{c.data} ({'tiny subset' if c.tiny else 'as given'})",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = (
            f"{p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
            f"compute capability {p.major}.{p.minor}"
        )
        env["gpus visible"] = torch.cuda.device_count()
        rc, drv = (
            run_sub(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 20, REPO)
            if shutil.which("nvidia-smi")
            else (1, "")
        )
        env["driver"] = drv.strip().splitlines()[0] if rc == 0 and drv.strip() else "-"
        gpu = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    else:
        env["gpu"] = "none (torch.cuda.is_available() is False)"
        gpu = "no GPU"
    md = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in env.items())]
    summary = (
        f"torch {env['torch']}, CUDA {torch.version.cuda or '-'}, cuDNN {env['cudnn']}, {gpu}, "
        f"optuna {env['optuna']}, hpsearch {hpsearch.__version__}"
    )
    problems = []
    if c.cuda:
        condition = "torch, Optuna and hpsearch import; torch sees the GPU and it supports bf16"
        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device")
        elif not torch.cuda.is_bf16_supported():
            problems.append("the GPU does not support bf16, which the engine trains in")
    else:
        condition = "torch, Optuna and hpsearch import (no GPU asked for)"
    return judged(problems, summary, md, env, condition)


# The throughput issue's target for the engine: the seed CNN at 128px, bf16, on one H100.
TARGET_IMAGES_PER_S = 20_000.0


def throughput_target(device: str, tiny: bool, asked: float | None) -> float | None:
    """The engine row's img/s target: ``--min-images-per-s`` if given, else the H100 target on
    CUDA at full size, else none (a CPU, or --tiny's 32px, says nothing about that target)."""
    if asked is not None:
        return asked
    return TARGET_IMAGES_PER_S if device == "cuda" and not tiny else None


def check_throughput(c: Ctx) -> dict[str, Any]:
    tp = bench_module("throughput")
    size = c.sizes.image_size
    workers = os.cpu_count() or 1
    target = throughput_target(c.device, c.tiny, c.min_rate)
    if target is not None:
        condition = f"every row ran, and the engine row trained >= {target:,.0f} img/s"
    else:
        condition = (
            "every row ran (no img/s target here: the default, "
            f"{TARGET_IMAGES_PER_S:,.0f} img/s, is for the seed CNN at 128px on one GPU; "
            "--min-images-per-s sets one)"
        )
    rows: dict[str, dict[str, Any]] = {}
    errors = []
    for row, steps in c.sizes.row_steps.items():
        cmd = [
            *(sys.executable, str(BENCH / "throughput.py"), "--row", row),
            *("--data", str(c.data), "--image-size", str(size), "--steps", str(steps)),
            *("--device", c.device, "--workers", str(workers)),
        ]
        reserve = 10.0 * (len(c.sizes.row_steps) - len(rows) - 1)
        code, out = run_sub(cmd, c.left(reserve), REPO)
        echo(f"$ {' '.join(cmd)}\n{out}")
        if code == 0:
            try:
                rows[row] = {"steps": steps, **json.loads(last_line(out))}
                continue
            except ValueError:
                why = f"unreadable result {last_line(out)[:80]!r}"
        else:
            why = "timed out" if code is None else one_line(last_line(out))
        errors.append(f"row {row}: {why}")
        rows[row] = {"steps": steps, "error": why}
    seed = rows.get("seed", {}).get("rate")
    tuned = rows.get("tuned", {}).get("rate")
    md = [
        f"Seed CNN, batch {tp.BATCH}, {size}px, {'bf16 autocast' if c.cuda else 'fp32'} on "
        f"{c.device}; each row in its own process, one round "
        f"(`bench/throughput.py --row ROW --image-size {size} --device {c.device}`).",
        "",
        "| pipeline | timed steps | img/s | x seed | x tuned |",
        "|---|---:|---:|---:|---:|",
    ]
    for row, r in rows.items():
        rate = r.get("rate")
        label = tp.ROWS[row].format(workers=workers)
        if rate is None:
            md.append(f"| {label} | {r['steps']} | failed: {r['error']} | | |")
            continue
        xs = fmt(rate / seed, 2) if seed else "-"
        xt = fmt(rate / tuned, 2) if tuned else "-"
        md.append(f"| {label} | {r['steps']} | {fmt(rate)} | {xs} | {xt} |")
    engine = rows.get("engine", {})
    rate = engine.get("rate")
    figures: dict[str, Any] = {
        "rows": rows,
        "image_size": size,
        "device": c.device,
        "min_images_per_s": target,
    }
    problems = list(errors)
    if rate is not None:
        md += [
            "",
            f"Engine cache: {engine['images']} images decoded in {engine['build_s']:.1f} s, "
            f"{engine['held_mib']:.0f} MiB held on the device"
            + (f", peak {engine['peak_cuda_mib']:.0f} MiB allocated." if c.cuda else "."),
        ]
        if target is not None:
            met = rate >= target
            figures["target_met"] = met
            md.append(
                f"Engine {fmt(rate, 0)} img/s against the target of {target:,.0f} img/s: "
                + ("met." if met else "**NOT met**.")
            )
            if not met:
                problems.append(
                    f"engine {fmt(rate, 0)} img/s is below the target of {target:,.0f} img/s"
                )
        if seed and tuned:
            ratios = {"x seed pipeline": rate / seed, "x tuned DataLoader": rate / tuned}
            figures["ratios"] = ratios
            md.append(
                "For information, not judged (they depend on the host's cores as much as the "
                f"GPU): engine = {rate / seed:.1f}x the seed pipeline (the throughput issue asks "
                f"10x on an H100), {rate / tuned:.1f}x a tuned DataLoader (it asks 3x)."
            )
    if rate is not None and seed and tuned:
        summary = (
            f"engine {fmt(rate, 0)} img/s = {rate / seed:.1f}x seed "
            f"pipeline, {rate / tuned:.1f}x tuned DataLoader ({c.device}, {size}px)"
        )
    else:
        summary = "; ".join(errors) or "incomplete"
    return judged(problems, summary, md, figures, condition)


def _repeat(data: Any, n: int, val: int) -> Any:
    """``data`` with exactly ``n`` training rows and ``val`` validation rows (each split repeated
    in memory as needed)."""
    import torch

    idx = torch.arange(n, device=data.device) % len(data.train_labels)
    vdx = torch.arange(val, device=data.device) % len(data.val_labels)
    return replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        val_images=data.val_images[vdx],
        val_labels=data.val_labels[vdx],
    )


def within_plan(predicted: int, measured: int | None) -> tuple[bool, str]:
    """The largest-trial rule: the memory a trial really held is within the plan's estimate
    (``trial_memory(...).total``), since the plan packs K workers on a GPU by it. A plan above
    the measurement only wastes room; one below it packs too many."""
    gib = 2**30
    if measured is None or measured <= 0:
        return False, "nothing was measured"
    if predicted <= 0:
        return False, f"the plan predicts {predicted} bytes"
    share = measured / predicted
    said = f"measured {measured / gib:.2f} GiB, planned {predicted / gib:.2f} GiB ({share:.0%})"
    if measured <= predicted:
        return True, f"{said}: within the plan"
    return False, f"{said}: above the plan, which would pack too many trials on a GPU"


class _GlibcPeak:
    """The CPU's stand-in for ``torch.cuda.max_memory_allocated``: the bytes glibc's allocator
    holds in use (``mallinfo2``), read after every torch operator while active (a peak inside
    one operator is missed). None of it exists without glibc."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (n, ctypes.c_size_t)
                for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                          "uordblks", "fordblks", "keepcost")
            ]  # fmt: skip

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "mallinfo2"):
            raise OSError("no glibc mallinfo2 to read the CPU allocator with")
        libc.mallinfo2.restype = MallInfo2
        self._libc = libc

    def in_use(self) -> int:
        info = self._libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)  # heap blocks in use + mmapped blocks

    @contextlib.contextmanager
    def watch(self) -> Iterator[dict[str, int]]:
        from torch.utils._python_dispatch import TorchDispatchMode

        got = {"before": self.in_use()}
        got["peak"] = got["before"]
        read = self.in_use

        class Peak(TorchDispatchMode):  # type: ignore[no-untyped-call]
            def __torch_dispatch__(
                self, func: Any, types: Any, args: Any = (), kwargs: Any = None
            ) -> Any:
                out = func(*args, **(kwargs or {}))
                got["peak"] = max(got["peak"], read())
                return out

        with Peak():  # type: ignore[no-untyped-call]
            yield got


@contextlib.contextmanager
def watch_memory(cuda: bool, glibc: _GlibcPeak | None) -> Iterator[dict[str, int]]:
    """``before`` and ``peak`` bytes in use over the block (and, on CUDA, ``reserved_before``
    and ``reserved_peak``: what the caching allocator held, the figure a GPU really gives)."""
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        got = {
            "before": torch.cuda.memory_allocated(),
            "reserved_before": torch.cuda.memory_reserved(),
        }
        yield got
        torch.cuda.synchronize()
        got["peak"] = torch.cuda.max_memory_allocated()
        got["reserved_peak"] = torch.cuda.max_memory_reserved()
    else:
        assert glibc is not None
        with glibc.watch() as got:
            yield got


def measure_parts(spec: Any, data: Any, eval_bs: int, glibc: _GlibcPeak | None) -> dict[str, int]:
    """The parts of a trial's memory, measured one by one: a replay of ``fit``'s training step
    (the engine's model, optimizer, normaliser and crop; bf16 autocast on CUDA) and the engine's
    ``evaluate`` at ``eval_bs``. Weights, gradients and optimizer state are the bytes of those
    tensors; the step and evaluation are the peak in use above what was in use before them."""
    import torch
    import torch.nn.functional as F

    from hpsearch.engine.augment import random_resized_crop
    from hpsearch.engine.infer import Normalizer
    from hpsearch.engine.model import build_model
    from hpsearch.engine.train import evaluate, make_optimizer

    dev = data.device
    cuda = dev.type == "cuda"
    cl = torch.channels_last
    model = build_model(spec.arch, len(data.classes), data.image_size).to(dev).to(memory_format=cl)
    params = list(model.parameters())
    opt = make_optimizer(params, spec.optim, dev)
    norm = Normalizer(dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(spec.seed)
    bs = spec.batch_size
    images, labels = data.train_images[:bs], data.train_labels[:bs]
    augment = spec.crop_scale != (1.0, 1.0) or spec.flip

    def step() -> None:
        x = norm(images)
        if augment:
            x = random_resized_crop(x, spec.crop_scale, spec.flip, gen)
        x = x.contiguous(memory_format=cl)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    model.train()
    step()  # the optimizer's state appears, cuDNN picks its algorithms
    state = [t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    with watch_memory(cuda, glibc) as train:
        step()
    with watch_memory(cuda, glibc) as ev:
        evaluate(model, data.val_images[:eval_bs], data.val_labels[:eval_bs], eval_bs)
    return {
        "weights": sum(p.nbytes for p in params),
        "gradients": sum(p.grad.nbytes for p in params if p.grad is not None),
        "optimizer": sum(t.nbytes for t in state if t.device.type == dev.type),
        "train_step": train["peak"] - train["before"],
        "evaluation": ev["peak"] - ev["before"],
    }


def check_largest_trial(c: Ctx) -> dict[str, Any]:
    import gc

    # as the launcher's workers run (hpsearch.search.launcher.worker_env): the plan is for them
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from hpsearch.config import load_study, parse_set
    from hpsearch.engine.data import load_data
    from hpsearch.engine.memory import trial_memory
    from hpsearch.engine.train import fit, resolve_device
    from hpsearch.search.gpu_plan import largest_specs

    size = c.sizes.image_size
    cfg = load_study(
        "catdog", [parse_set(f"data.root={c.data}"), parse_set(f"data.image_size={size}")]
    )
    eval_bs = cfg.train.eval_batch_size
    if c.sizes.largest_eval_batch is not None:
        eval_bs = min(eval_bs, c.sizes.largest_eval_batch)
    if c.cuda:
        measure = "torch.cuda.max_memory_reserved over fit(), above what was reserved before it"
        glibc = None
    else:
        measure = (
            "glibc's bytes in use (mallinfo2, read after every operator) over fit(), above what "
            "was in use before it; the CPU plan (fp32, no cuDNN workspace)"
        )
        try:
            glibc = _GlibcPeak()
        except OSError as e:
            return result(
                "skipped",
                "",
                reason=f"{e}: the CPU has no allocator counter to compare the plan with",
            )
    condition = (
        f"each trial's measured peak ({measure}) is within the plan's estimate "
        "(hpsearch.engine.memory.trial_memory(...).total)"
    )
    dev = resolve_device(c.device)
    data = load_data(cfg.data, dev)
    n_classes = len(data.classes)
    rows: list[dict[str, Any]] = []
    problems = []
    for spec in largest_specs(cfg):
        if c.sizes.largest_batch is not None:
            spec = replace(spec, batch_size=min(spec.batch_size, c.sizes.largest_batch))
        spec = replace(spec, epochs=1)
        bs = spec.batch_size
        plan = trial_memory(spec, n_classes, size, eval_bs, c.device)
        fit(spec, _repeat(data, 2 * bs, eval_bs), eval_batch_size=eval_bs)  # warm-up, autotune
        gc.collect()
        trial = _repeat(data, c.sizes.largest_steps * bs, eval_bs)
        with watch_memory(c.cuda, glibc) as got:
            res = fit(spec, trial, eval_batch_size=eval_bs)
        if c.cuda:
            measured = got["reserved_peak"] - got["reserved_before"]
            slack = got["reserved_peak"] - got["peak"]  # reserved beyond the tensors in use
        else:
            measured, slack = got["peak"] - got["before"], None
        ips = res.train_images_per_s
        n_params = res.n_params
        del res, trial
        gc.collect()
        parts = measure_parts(spec, _repeat(data, bs, eval_bs), eval_bs, glibc)
        ok, verdict = within_plan(plan.total, measured)
        a = spec.arch
        rows.append(
            {
                "n_blocks": a.n_blocks,
                "channels": list(a.channels),
                "kernel_sizes": list(a.kernel_sizes),
                "head": a.head,
                "dense_units": a.dense_units,
                "optimizer": spec.optim.optimizer,
                "batch_size": bs,
                "eval_batch_size": eval_bs,
                "n_params": n_params,
                "images_per_s": ips,
                "predicted": asdict(plan) | {"total": plan.total},
                "measured": parts | {"allocator_slack": slack, "total": measured},
                "within_plan": ok,
                "verdict": verdict,
            }
        )
        if not ok:
            problems.append(f"{a.n_blocks} blocks, batch {bs}: {verdict}")
        gc.collect()
    mib = 2**20

    def m(x: int | None) -> str:
        return fmt(None if x is None else x / mib, 1)

    md = [
        f"The largest trials of the catdog space (fewest and most blocks), {size}px on "
        f"{c.device}: {c.sizes.largest_steps} training step(s) after a 2-step warm-up, then "
        f"evaluation at eval_batch_size {eval_bs}"
        + (f"; --tiny caps the batch at {c.sizes.largest_batch}" if c.sizes.largest_batch else "")
        + (" and eval_batch_size at its value" if c.sizes.largest_eval_batch else "")
        + ".",
        "",
        "| blocks | channels | kernels | head | dense | batch | params | img/s | planned MiB | "
        "measured MiB | within plan |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['n_blocks']} | {r['channels']} | {r['kernel_sizes']} | {r['head']} | "
            f"{r['dense_units']} | {r['batch_size']} | {r['n_params']:,} | "
            f"{fmt(r['images_per_s'])} | {m(r['predicted']['total'])} | "
            f"{m(r['measured']['total'])} | {'yes' if r['within_plan'] else '**NO**'} |"
        )
    cast = "bf16 weight copies" if c.cuda else "no bf16 copies on the CPU"
    for r in rows:
        p, q = r["predicted"], r["measured"]
        md += [
            "",
            f"By part, {r['n_blocks']} blocks (MiB; measured: a replay of one training step and "
            f"the engine's evaluate(), see measure_parts):",
            "",
            "| part | planned | measured |",
            "|---|---:|---:|",
            f"| weights | {m(p['weights'])} | {m(q['weights'])} |",
            f"| gradients | {m(p['gradients'])} | {m(q['gradients'])} |",
            f"| optimizer state | {m(p['optimizer'])} | {m(q['optimizer'])} |",
            f"| training step, batch {r['batch_size']} (activations, {cast}) | "
            f"{m(p['train_step'] + p['cast_weights'])} | {m(q['train_step'])} |",
            f"| evaluation, batch {r['eval_batch_size']} ({cast}) | "
            f"{m(p['evaluation'] + p['cast_weights'])} | {m(q['evaluation'])} |",
            f"| workspace and rounding (measured: reserved beyond in use) | "
            f"{m(p['workspace'])} | {m(q['allocator_slack'])} |",
            f"| **trial (the rule)** | {m(p['total'])} | {m(q['total'])} |",
            "",
            "The measured training step is what the step added to what was in use before it, "
            "which held the previous step's gradients; the plan's counts the new ones again.",
            "",
            f"{r['verdict']}.",
        ]
    top = max(rows, key=lambda r: r["n_params"])
    summary = (
        f"{len(rows)} largest trials; "
        + "; ".join(
            f"{r['n_blocks']} blocks: {m(r['measured']['total'])} of "
            f"{m(r['predicted']['total'])} MiB planned"
            for r in rows
        )
        + f"; biggest {top['n_params'] / 1e6:.1f}M params at {fmt(top['images_per_s'], 0)} img/s"
    )
    return judged(problems, summary, md, {"rows": rows, "image_size": size}, condition)


def check_packing(c: Ctx) -> dict[str, Any]:
    size, steps, ks = c.sizes.image_size, c.sizes.packing_steps, c.sizes.packing_ks
    condition = (
        f"every K in {', '.join(map(str, ks))} ran all its processes to the end (their "
        "aggregate img/s is what trials_per_gpu judges the probe by)"
    )
    rows: list[dict[str, Any]] = []
    error = None
    for i, k in enumerate(ks):
        reserve = 10.0 * (len(ks) - i - 1)
        limit = c.left(reserve)
        code = (
            f"import argparse, json, pathlib, sys; sys.path.insert(0, {str(BENCH)!r}); "
            "import packing; "
            f"ns = argparse.Namespace(data=pathlib.Path({str(c.data)!r}), image_size={size}, "
            f"steps={steps}, device={c.device!r}); "
            f"print(json.dumps(packing.run(ns, 'seed', {k}, timeout={limit - 3:.0f})))"
        )
        rc, out = run_sub([sys.executable, "-c", code], limit, REPO)
        echo(f"$ packing.run(K={k})\n{out}")
        if rc != 0:
            error = f"K={k}: " + ("timed out" if rc is None else one_line(last_line(out)))
            break
        rows.append({"k": k, **json.loads(last_line(out))})
    md = [
        f"The seed CNN trained by K processes side by side (`bench/packing.py`), {steps} steps "
        f"of batch 32 each, {size}px on {c.device}; aggregate = all images / (last finish - "
        "first start).",
        "",
        "| K | aggregate img/s | x K=1 | per process img/s | peak MiB per process |",
        "|---:|---:|---:|---:|---:|",
    ]
    base = rows[0]["aggregate"] if rows else None
    for r in rows:
        x = r["aggregate"] / base if base else None
        peak = r["peak_mib"] if c.cuda else None
        md.append(
            f"| {r['k']} | {fmt(r['aggregate'])} | {fmt(x, 2)} | {fmt(r['per_process'])} | "
            f"{fmt(peak, 0)} |"
        )
    figures: dict[str, Any] = {"rows": rows, "image_size": size, "steps": steps}
    problems = []
    if error:
        md.append(f"\nStopped: {error}")
        problems.append(error)
    if rows:
        best = max(rows, key=lambda r: r["aggregate"])
        figures["best_k"] = best["k"]
        summary = (
            f"best aggregate at K={best['k']}: {fmt(best['aggregate'], 0)} img/s = "
            f"{best['aggregate'] / rows[0]['aggregate']:.2f}x K=1"
        )
    else:
        summary = error or "no rows"
    return judged(problems, summary, md, figures, condition)


# Aggregates within this share of the best are one run's noise apart: each of those Ks counts as
# a best K for the rule below. Not measured on a GPU yet (none has been lent).
PACKING_NOISE = 0.05


def judge_k(
    probe_k: int, aggregate: Mapping[int, float], noise: float = PACKING_NOISE
) -> tuple[bool, str]:
    """The trials-per-GPU rule: the probe's K is within one of the best measured K, the K whose
    aggregate img/s was highest (or within ``noise`` of it: a plateau has several)."""
    if not aggregate:
        return False, "no measured K to judge the probe's K by (the packing check gave no rows)"
    top = max(aggregate.values())
    best = sorted(k for k, v in aggregate.items() if v >= (1 - noise) * top)
    near = min(best, key=lambda k: abs(k - probe_k))
    said = ", ".join(f"K={k} {aggregate[k]:,.0f}" for k in sorted(aggregate))
    which = f"K={best[0]}" if len(best) == 1 else f"K in {best} (within {noise:.0%} of the top)"
    if abs(near - probe_k) <= 1:
        return True, f"the probe's K={probe_k} is within one of the best measured {which} ({said})"
    return False, (
        f"the probe's K={probe_k} is {abs(near - probe_k)} from the best measured {which} "
        f"({said} img/s)"
    )


def seed_study(work: Path, data: Path, size: int) -> Path:
    """A study file whose only trial is the seed CNN (every family left out of the space takes
    the seed's value): the trial bench/packing.py measures, so that the probe and the packing
    check judge the same thing."""
    path = work / "seed-study.yaml"
    path.write_text(
        f"# written by bench/gpu_check.py: the seed CNN alone\n"
        f"data: {{root: {json.dumps(str(data))}, image_size: {size}}}\n"
        "train: {epochs: 1, eval_batch_size: 500}\n"
        "search:\n  space:\n    n_blocks: 3\n"
    )
    return path


def check_trials_per_gpu(c: Ctx) -> dict[str, Any]:
    from hpsearch.config import load_study
    from hpsearch.engine.devices import visible_gpus
    from hpsearch.engine.images import list_split
    from hpsearch.search.gpu_plan import largest_memory, probe, trials_per_gpu

    condition = (
        "the K the probe picks for the seed CNN (gpu_plan.probe + trials_per_gpu) is within one "
        f"of the best K the packing check measured (aggregates within {PACKING_NOISE:.0%} of "
        "the top count as best)"
    )
    size = c.sizes.image_size
    study = seed_study(c.work, c.data, size)
    cfg = load_study(str(study))
    classes, _ = list_split(cfg.data.root / "train", cfg.data.max_per_class)
    spec, model = largest_memory(cfg, len(classes))
    gpu = visible_gpus()[0]
    t0 = time.time()
    p = probe([str(study)], gpu, timeout=c.left(5))
    probe_s = time.time() - t0
    k, why = trials_per_gpu(p, model)
    packing = c.prior.get("packing", {})
    aggregate = {int(r["k"]): float(r["aggregate"]) for r in packing.get("rows", [])}
    ok, verdict = judge_k(k, aggregate)
    md = [
        f"The probe (`hpsearch.search.gpu_plan.probe`, {probe_s:.0f} s, on GPU entry {gpu}) for "
        f"a study whose one trial is the seed CNN at {size}px, batch {spec.batch_size} (what the "
        "packing check trains), and the rule's K:",
        "",
        f"> {why}",
        "",
        f"{verdict}.",
    ]
    figures = {
        "k": k,
        "why": why,
        "probe": asdict(p),
        "probe_s": probe_s,
        "measured": aggregate,
        "within_one": ok,
    }
    summary = f"the probe picks K={k}; " + verdict
    return judged([] if ok else [verdict], summary, md, figures, condition)


GRAPH_CONDITION = (
    "the losses of the step replayed as a CUDA graph agree with eager ones: max |difference| over "
    "the first 20 steps <= max(0.02, 4x eager vs eager); speed is reported, not judged"
)


def check_cuda_graphs(c: Ctx) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from hpsearch.engine.model import build_model
    from hpsearch.engine.runtime import tune_host
    from hpsearch.engine.train import make_optimizer, resolve_device

    tp = bench_module("throughput")
    dev = resolve_device(c.device)
    size, batch, warm, steps = c.sizes.image_size, 32, 3, c.sizes.graph_steps
    n = warm + steps
    cl = torch.channels_last
    gen = torch.Generator(device=dev).manual_seed(0)
    bank = [
        (
            torch.randn(batch, 3, size, size, device=dev, generator=gen).contiguous(
                memory_format=cl
            ),
            torch.randint(0, 2, (batch,), device=dev, generator=gen),
        )
        for _ in range(8)
    ]
    if c.cuda:
        torch.backends.cudnn.benchmark = True

    def fresh(capturable: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(tp.SEED_ARCH, 2, size).to(dev).to(memory_format=cl)
        o = tp.SEED_OPTIM
        if capturable:  # a CUDA graph replays the step: its state must live on the device
            opt: torch.optim.Optimizer = torch.optim.Adam(
                model.parameters(),
                lr=o.lr,
                weight_decay=o.weight_decay,
                fused=True,
                capturable=True,
            )
        else:
            opt = make_optimizer(list(model.parameters()), o, dev)  # the engine's optimizer
        return model, opt

    def autocast(cache: bool = True) -> Any:
        if not c.cuda:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)

    def sync() -> None:
        if c.cuda:
            torch.cuda.synchronize()

    def eager() -> tuple[torch.Tensor, float]:
        model, opt = fresh(False)
        losses = torch.zeros(n, device=dev)
        t0 = 0.0
        for i in range(n):
            if i == warm:
                sync()
                t0 = time.perf_counter()
            x, y = bank[i % 8]
            with autocast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses[i].copy_(loss.detach())
        sync()
        return losses.cpu(), (time.perf_counter() - t0) / steps * 1e3

    tune_host()  # as fit() does
    e1, eager_ms = eager()
    figures: dict[str, Any] = {"image_size": size, "batch": batch, "eager_ms": eager_ms}
    if not c.cuda:
        md = [f"Eager batch-{batch} step of the seed CNN at {size}px on cpu: {eager_ms:.2f} ms."]
        return result(
            "skipped",
            f"eager step {eager_ms:.2f} ms on cpu; no CUDA graph",
            md,
            figures,
            reason="CUDA graphs need a CUDA device (torch.cuda.graph); the eager step was timed",
            condition=GRAPH_CONDITION,
        )
    e2, _ = eager()  # eager again: the run-to-run noise (cuDNN's algorithms need not be exact)

    model, opt = fresh(True)
    losses = torch.zeros(n, device=dev)
    static_x, static_y = bank[0][0].clone(), bank[0][1].clone()
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for i in range(warm):
            static_x.copy_(bank[i % 8][0])
            static_y.copy_(bank[i % 8][1])
            with autocast(cache=False):
                loss = F.cross_entropy(model(static_x), static_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses[i].copy_(loss.detach())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # backward in the graph allocates .grad from its pool
    with torch.cuda.graph(graph):
        with autocast(cache=False):
            static_loss = F.cross_entropy(model(static_x), static_y)
        static_loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    sync()
    t0 = time.perf_counter()
    for i in range(warm, n):
        static_x.copy_(bank[i % 8][0])
        static_y.copy_(bank[i % 8][1])
        graph.replay()  # forward, backward and the optimizer step, one launch
        losses[i].copy_(static_loss.detach())
    sync()
    graph_ms = (time.perf_counter() - t0) / steps * 1e3
    g = losses.cpu()
    head = min(n, 20)
    noise = float((e1[:head] - e2[:head]).abs().max())
    diff = float((e1[:head] - g[:head]).abs().max())
    diff_all = float((e1 - g).abs().max())
    agree = diff <= max(2e-2, 4 * noise)
    speedup = eager_ms / graph_ms
    keep = agree and speedup >= 1.1
    figures.update(
        graph_ms=graph_ms,
        speedup=speedup,
        max_loss_diff_first20=diff,
        max_loss_diff_all=diff_all,
        eager_vs_eager_first20=noise,
        agree=agree,
        worth_adopting=keep,
    )
    md = [
        f"The seed CNN's training step (forward, backward, fused Adam) at batch {batch}, {size}px, "
        f"bf16, {steps} timed steps after {warm} warm-up; inputs already on the device "
        "(the engine's batch gather and augmentation are not in either figure).",
        "",
        "| step | ms/step | x eager |",
        "|---|---:|---:|",
        f"| eager (the engine's settings) | {eager_ms:.3f} | 1.00 |",
        f"| CUDA graph (torch.cuda.graph, capturable fused Adam) | {graph_ms:.3f} | "
        f"{speedup:.2f} |",
        "",
        f"Losses, graph vs eager: max |difference| {diff:.2e} over the first {head} steps "
        f"({diff_all:.2e} over all {n}); eager vs eager {noise:.2e}. Agree: "
        f"{'yes' if agree else 'NO'}. Worth adopting (>= 1.1x and agreeing): "
        f"{'yes' if keep else 'no'}; the engine runs eager unless train.cuda_graphs is set.",
    ]
    summary = (
        f"eager {eager_ms:.3f} ms, graph {graph_ms:.3f} ms ({speedup:.2f}x); losses "
        f"{'agree' if agree else 'DISAGREE'}"
    )
    problems = (
        []
        if agree
        else [f"graph and eager losses differ by {diff:.2e} (eager vs eager {noise:.2e})"]
    )
    product = product_graphs(dev, size, steps)  # the study-file option's own path
    figures["train_cuda_graphs"] = product
    md += [
        "",
        "The product's own path, `train.cuda_graphs` (`hpsearch.engine.train.time_steps`: the "
        "batch gather, normalisation and crop included; and two one-epoch `fit`s):",
        "",
        "| train.cuda_graphs | ms/step | img/s | fit's epoch loss |",
        "|---|---:|---:|---:|",
        f"| false | {product['eager_ms']:.3f} | {product['eager_images_per_s']:.0f} | "
        f"{product['eager_loss']:.6f} |",
        f"| true | {product['graph_ms']:.3f} | {product['graph_images_per_s']:.0f} | "
        f"{product['graph_loss']:.6f} |",
    ]
    summary += f"; train.cuda_graphs {product['eager_ms']:.3f} -> {product['graph_ms']:.3f} ms/step"
    if not product["graphed"]:
        problems.append("train.cuda_graphs did not replay a graph on CUDA")
    if abs(product["eager_loss"] - product["graph_loss"]) > max(2e-2, 4 * noise):
        problems.append(
            f"fit with train.cuda_graphs gives epoch loss {product['graph_loss']:.4f} against "
            f"{product['eager_loss']:.4f} eager"
        )
    return judged(problems, summary, md, figures, GRAPH_CONDITION)


def product_graphs(dev: Any, size: int, steps: int) -> dict[str, Any]:
    """``train.cuda_graphs`` as hpsearch runs it: ``time_steps`` eager and graphed, and one
    epoch of ``fit`` each way from the same seed (its training loss), on random images."""
    from dataclasses import replace as with_

    import torch

    from hpsearch.engine.data import DeviceData
    from hpsearch.engine.train import fit, time_steps
    from hpsearch.space import seed_spec

    gen = torch.Generator(device=dev).manual_seed(0)
    n = 32 * 20
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=dev, generator=gen)
    labels = torch.randint(0, 2, (n,), device=dev, generator=gen)
    data = DeviceData(images, labels, images[:64], labels[:64], ("cat", "dog"), size, dev)
    spec = seed_spec(1, 0)
    eager = time_steps(spec, data, graphed=False, steps=steps)
    graph = time_steps(spec, data, graphed=True, steps=steps)
    loss = {
        on: fit(with_(spec, cuda_graphs=on), data, eval_batch_size=64).history[0].train_loss
        for on in (False, True)
    }
    return {
        "graphed": graph.graphed,
        "eager_ms": eager.seconds_per_step * 1e3,
        "graph_ms": graph.seconds_per_step * 1e3,
        "eager_images_per_s": eager.images_per_s,
        "graph_images_per_s": graph.images_per_s,
        "eager_loss": loss[False],
        "graph_loss": loss[True],
    }


def check_search(c: Ctx) -> dict[str, Any]:
    import optuna

    from hpsearch.search.run import MAX_SQLITE_WORKERS

    probed = c.prior.get("trials_per_gpu", {}).get("k")
    k = min(int(probed or 2), MAX_SQLITE_WORKERS)  # more would be capped by run itself
    trials = max(4, 2 * k)
    work = c.work / "search"
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'search.db'}"
    cmd = [
        *(sys.executable, "-m", "hpsearch.cli", "run", "--study", "smoke"),
        *("--trials", str(trials), "--workers", str(k), "--storage", url),
        *("--set", f"data.root={c.data}", "--set", f"train.device={c.device}"),
    ]
    if c.sizes.search_epochs is not None:
        cmd += ["--set", f"train.epochs={c.sizes.search_epochs}"]
    rc, out = run_sub(cmd, c.left(reserve=40), work)
    echo(f"$ {' '.join(cmd)}\n{out}")
    if rc != 0:
        why = "timed out" if rc is None else f"exit code {rc}: {one_line(last_line(out))}"
        return result(
            "failed",
            f"hpsearch run {why}",
            [f"    {ln}" for ln in out.splitlines()[-20:]],
            reason=f"hpsearch run --workers {k}: {why}",
            condition="the run exits 0, then its trials are counted",
        )
    study = optuna.load_study(study_name="smoke", storage=url)
    states = Counter(t.state.name for t in study.trials)
    finished = states["COMPLETE"] + states["PRUNED"] + states["FAIL"]
    devices = sorted({str(t.user_attrs.get("device", "?")) for t in study.trials})
    best = study.best_trial
    ckpt = best.user_attrs.get("checkpoint")
    cls_dir = sorted(p for p in (c.data / "val").iterdir() if p.is_dir())[0]
    image = sorted(p for p in cls_dir.iterdir() if p.is_file())[0]
    pcmd = [
        *(sys.executable, "-m", "hpsearch.cli", "predict", "--study", "smoke"),
        *("--storage", url, "--device", "cpu", str(image)),
    ]
    prc, pout = run_sub(pcmd, c.left(), work, {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    echo(f"$ CUDA_VISIBLE_DEVICES= {' '.join(pcmd)}\n{pout}")
    problems = []
    if finished != trials or states["RUNNING"] or states["WAITING"]:
        problems.append(f"asked for {trials} trials, the study has {dict(states)}")
    if states["FAIL"]:
        problems.append(f"{states['FAIL']} trial(s) failed")
    if c.cuda and not all(d.startswith("cuda") for d in devices):
        problems.append(f"trials ran on {devices}, not all on CUDA")
    if not ckpt:
        problems.append(f"best trial {best.number} kept no checkpoint")
    if prc != 0:
        problems.append("predict on the CPU: " + ("timed out" if prc is None else last_line(pout)))
    tail = [ln for ln in out.splitlines() if ln.startswith(("done:", "best:", "study "))]
    src = f"the probe's K={probed}" if probed else "2: no probe ran"
    if probed and int(probed) > k:
        src += f", capped at {MAX_SQLITE_WORKERS} for SQLite"
    md = [
        f"`hpsearch run --study smoke --trials {trials} --workers {k}` ({src}) on {c.device} "
        "with a temp SQLite file, then `hpsearch predict --device cpu` with no GPU visible:",
        "",
        *(f"    {ln}" for ln in tail),
        f"    $ hpsearch predict --study smoke --device cpu {image.parent.name}/{image.name}",
        *(f"    {ln}" for ln in pout.strip().splitlines()[-3:]),
        "",
        f"Trial states: {dict(sorted(states.items()))} (asked for {trials}); devices: "
        f"{', '.join(devices)}; best trial {best.number} (val_accuracy {best.value:.4f}) "
        f"checkpoint {'kept' if ckpt else 'MISSING'}.",
    ]
    figures = {
        "trials": trials,
        "workers": k,
        "states": dict(states),
        "devices": devices,
        "best_trial": best.number,
        "best_value": best.value,
        "checkpoint": ckpt,
        "predict": last_line(pout),
    }
    summary = (
        f"{finished}/{trials} trials finished with {k} workers ({states['COMPLETE']} complete, "
        f"{states['PRUNED']} pruned, {states['FAIL']} failed), none left running; predict on "
        f"the CPU: {'ok' if prc == 0 else 'FAILED'}"
    )
    condition = (
        f"the run exits 0; exactly {trials} trials finished, none FAIL, RUNNING or WAITING"
        + ("; every trial ran on CUDA" if c.cuda else "")
        + "; the best trial kept a checkpoint that predict loads on the CPU"
    )
    return judged(problems, summary, md, figures, condition)


def gpu_entry() -> tuple[str, str]:
    """The first GPU this process sees as a scheduler would name it in CUDA_VISIBLE_DEVICES: its
    UUID (``GPU-...``, read in a child so that this process holds no CUDA context), else its
    entry of the inherited list; and how it was found."""
    from hpsearch.engine.devices import visible_gpus

    code = "import torch; print(torch.cuda.get_device_properties(0).uuid)"
    rc, out = run_sub([sys.executable, "-c", code], 60, REPO)
    uuid = last_line(out) if rc == 0 else ""
    if re.fullmatch(r"(GPU-)?[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", uuid):
        return (uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"), "its UUID"
    return visible_gpus()[0], f"its ordinal (no UUID read: {one_line(out or 'no output')})"


WORKER_LINE = re.compile(r"^\[w(\d+)\] started pid \d+ \((.*)\)$")
K_LINE = re.compile(r"^(\d+) trials per GPU: ")


def judge_auto_k(
    out: str, entry: str, trials: int, max_workers: int
) -> tuple[list[str], int | None]:
    """What an automatic-K ``hpsearch run`` printed, judged: the probe's "K trials per GPU: ..."
    line, and min(K, ``max_workers``, ``trials``) workers started, each on the GPU ``entry``.
    Returns the problems and K."""
    lines = out.splitlines()
    said = [m for m in map(K_LINE.match, lines) if m]
    problems = []
    warned = [ln for ln in lines if ln.startswith("warning:") and "trials-per-gpu" in ln]
    if warned:
        problems.append(f"the probe failed: {warned[0]}")
    if not said:
        problems.append("no 'N trials per GPU: ...' line: the probe did not pick K")
        return problems, None
    k = int(said[0].group(1))
    started = [m for m in map(WORKER_LINE.match, lines) if m]
    want = min(k, max_workers, trials)
    if len(started) != want:
        problems.append(
            f"{len(started)} workers started, expected min(K={k}, {max_workers}, {trials}) = {want}"
        )
    elsewhere = [m.group(0) for m in started if f"CUDA_VISIBLE_DEVICES={entry})" not in m.group(2)]
    if elsewhere:
        problems.append(f"a worker not on CUDA_VISIBLE_DEVICES={entry}: {elsewhere[0]}")
    return problems, k


def check_auto_k(c: Ctx) -> dict[str, Any]:
    import optuna

    from hpsearch.search.run import MAX_SQLITE_WORKERS

    trials = 6
    entry, how = gpu_entry()
    condition = (
        "under CUDA_VISIBLE_DEVICES=<the GPU's UUID>, `hpsearch run` without --workers or "
        "--trials-per-gpu exits 0; it prints the probe's 'K trials per GPU: ...' line; it starts "
        f"min(K, {MAX_SQLITE_WORKERS} for SQLite, {trials} trials) workers, each on that GPU; "
        f"exactly {trials} trials finish, none FAIL, RUNNING or WAITING, all on CUDA"
    )
    work = c.work / "auto-k"
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'auto-k.db'}"
    cmd = [
        *(sys.executable, "-m", "hpsearch.cli", "run", "--study", "smoke"),
        *("--trials", str(trials), "--storage", url),
        *("--set", f"data.root={c.data}", "--set", "train.device=cuda"),
        *("--set", "train.epochs=1"),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": entry}  # as a scheduler hands the GPU over
    t0 = time.time()
    rc, out = run_sub(cmd, c.left(reserve=5), work, env)
    seconds = time.time() - t0
    echo(f"$ CUDA_VISIBLE_DEVICES={entry} {' '.join(cmd)}\n{out}")
    problems, k = judge_auto_k(out, entry, trials, MAX_SQLITE_WORKERS)
    if rc != 0:
        why = "timed out" if rc is None else f"exit code {rc}: {one_line(last_line(out))}"
        problems.insert(0, f"hpsearch run {why}")
    states: Counter[str] = Counter()
    devices: list[str] = []
    if rc == 0:
        study = optuna.load_study(study_name="smoke", storage=url)
        states = Counter(t.state.name for t in study.trials)
        devices = sorted({str(t.user_attrs.get("device", "?")) for t in study.trials})
        finished = states["COMPLETE"] + states["PRUNED"]
        if finished != trials or states["FAIL"] or states["RUNNING"] or states["WAITING"]:
            problems.append(f"asked for {trials} trials, the study has {dict(states)}")
        if not devices or not all(d.startswith("cuda") for d in devices):
            problems.append(f"trials ran on {devices}, not all on CUDA")
    keep = [
        ln
        for ln in out.splitlines()
        if K_LINE.match(ln)
        or WORKER_LINE.match(ln)
        or ln.startswith(("measuring one trial", "warning:", "note:", "done:", "best:"))
    ]
    md = [
        f"`CUDA_VISIBLE_DEVICES={entry} hpsearch run --study smoke --trials {trials} "
        f"--set train.epochs=1` (the GPU named by {how}; a temp SQLite file; {seconds:.0f} s), "
        "its lines about K and the workers:",
        "",
        *(f"    {ln}" for ln in keep or out.splitlines()[-15:]),
        "",
        f"Trial states: {dict(sorted(states.items()))}; devices: {', '.join(devices) or '-'}.",
    ]
    k_line = next((ln for ln in out.splitlines() if K_LINE.match(ln)), None)
    figures = {
        "cuda_visible_devices": entry,
        "trials": trials,
        "k": k,
        "k_line": k_line,
        "states": dict(states),
        "devices": devices,
        "seconds": seconds,
    }
    summary = (
        f"K={k} picked by the probe under CUDA_VISIBLE_DEVICES={entry}; "
        f"{sum(states.values())}/{trials} trials {dict(states)}"
    )
    return judged(problems, summary, md, figures, condition)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check_out_of_memory(c: Ctx) -> dict[str, Any]:
    import math

    import optuna
    import torch

    from hpsearch.config import load_study, parse_set
    from hpsearch.engine.data import load_data
    from hpsearch.engine.train import resolve_device
    from hpsearch.search.objective import TrialOutOfMemory, make_objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dev = resolve_device(c.device)
    size = c.sizes.image_size
    fixed = {
        "n_blocks": 1, "kernel_size": 3, "residual": "false", "batch_norm": "false",
        "activation": "relu", "dropout": 0.0, "optimizer": "adam", "lr": 1e-3,
    }  # fmt: skip
    sets = [
        *(f"data.root={c.data}", f"data.image_size={size}", "train.epochs=1"),
        *(f"train.device={c.device}", "search.enqueue_baseline=false"),
        *(f"search.space.{k}={v}" for k, v in fixed.items()),
        "search.space.channels=[8, 4096]",
    ]
    small: dict[str, Any] = {"channels_b1": 8, "dense_units": 16, "batch_size": 16}
    if c.cuda:
        # One batch's first activation (bf16, 4096 channels) takes 40% of the card, so the
        # forward and backward pass cannot fit: a real CUDA OOM after most memory is taken.
        total = torch.cuda.get_device_properties(dev).total_memory
        rows = math.ceil(0.4 * total / (size * size * 2 * 4096))
        sets += ["search.space.head=gap", "search.space.dense_units=[16, 32]"]
        sets.append(f"search.space.batch_size=[16, {rows}]")
        big = {"channels_b1": 4096, "dense_units": 32, "batch_size": rows}
        how = (
            f"activations: 4096 channels at {size}px, batch {rows} (one bf16 activation is "
            "40% of the card)"
        )
    else:
        # The host allocator: a 4096*(S/2)^2 x 65536 dense layer cannot be allocated (>250 GB).
        rows = 0
        sets += ["search.space.dense_units=[16, 65536]", "search.space.batch_size=[16, 32]"]
        big = {"channels_b1": 4096, "dense_units": 65536, "batch_size": 16}
        how = "parameters: a 4096-channel block flattened into a 65536-unit dense layer"
    cfg = load_study("smoke", [parse_set(s) for s in sets])
    data = load_data(cfg.data, dev)
    if rows > len(data.train_labels):
        data = _repeat(data, rows, len(data.val_labels))
    study = optuna.create_study(direction="maximize")
    for params in (small, big, small):
        study.enqueue_trial(params)
    objective = make_objective(cfg, data)

    def memory() -> int:
        return torch.cuda.memory_reserved(dev) if c.cuda else _rss_bytes()

    mem: list[dict[str, Any]] = []
    for _ in range(3):
        before = memory()
        if c.cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        study.optimize(objective, n_trials=1, catch=(TrialOutOfMemory,))
        peak = torch.cuda.max_memory_reserved(dev) if c.cuda else None
        mem.append(
            {
                "before_mib": before / 2**20,
                "peak_mib": peak / 2**20 if peak is not None else None,
                "after_mib": memory() / 2**20,
            }
        )
    t = study.trials
    states = [x.state.name for x in t]
    reason = t[1].user_attrs.get("fail_reason", "")
    kind = "GPU" if c.cuda else "host"
    returned = mem[1]["after_mib"] <= mem[1]["before_mib"] + 64
    unit = "memory_reserved" if c.cuda else "resident set"
    md = [
        f"Three trials in one process on {c.device}: small, too big ({how}), small.",
        "",
        f"| trial | state | {unit} before MiB | peak MiB | after MiB | reason |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for i, (x, m) in enumerate(zip(t, mem, strict=True)):
        why = x.user_attrs.get("fail_reason") or x.user_attrs.get("pruned_reason") or ""
        md.append(
            f"| {i} | {x.state.name} | {fmt(m['before_mib'], 0)} | {fmt(m['peak_mib'], 0)} | "
            f"{fmt(m['after_mib'], 0)} | {why[:120]} |"
        )
    if not c.cuda:
        md.append("\nNo CUDA here: the host allocator's failure was exercised instead.")
    figures = {"states": states, "memory": mem, "fail_reason": reason, "how": how}
    problems = []
    if states != ["COMPLETE", "FAIL", "COMPLETE"]:
        problems.append(f"states {states}, expected COMPLETE, FAIL, COMPLETE")
    if not reason.startswith(f"out of {kind} memory"):
        problems.append(f"trial 1's reason is {reason!r}, not 'out of {kind} memory'")
    if not returned:
        problems.append(
            f"{unit} {mem[1]['after_mib']:.0f} MiB after the OOM trial vs "
            f"{mem[1]['before_mib']:.0f} before"
        )
    summary = (
        f"trial 1 {states[1]} ({one_line(reason)[:80]}); {unit} {mem[1]['before_mib']:.0f} -> "
        f"{mem[1]['after_mib']:.0f} MiB"
        + (f" (peak {mem[1]['peak_mib']:.0f})" if c.cuda else "")
        + f"; trial 2 {states[2]}"
    )
    condition = (
        f"the trials end COMPLETE, FAIL, COMPLETE; the FAIL's reason starts 'out of {kind} "
        f"memory'; {unit} after it is within 64 MiB of before it"
    )
    return judged(problems, summary, md, figures, condition)


GPU_MARK = re.compile(r"\bpytest\.mark\.gpu\b")  # a decorator or a module's pytestmark


def judge_gpu_tests(
    counts: Mapping[str, int], exit_code: int | None, cuda: bool
) -> tuple[str, str]:
    """(status, reason) of a ``pytest -m gpu`` run from its counts (passed, failed, skipped,
    error) and exit code. It fails when nothing was collected, when any test failed or errored,
    or when pytest exited non-zero; on CUDA also when a test was skipped (a gpu test skipped on a
    GPU proves nothing). On the CPU, all skipped is a skip."""
    said = ", ".join(f"{n} {w}" for w, n in counts.items() if w != "deselected" and n)
    said = said or "no tests ran"
    collected = sum(n for w, n in counts.items() if w in ("passed", "failed", "skipped", "error"))
    if exit_code is None:
        return "failed", "pytest -m gpu timed out"
    if collected == 0:
        return "failed", f"pytest -m gpu collected no test (exit code {exit_code})"
    if counts.get("failed") or counts.get("error") or exit_code != 0:
        return "failed", f"pytest exit code {exit_code}: {said}"
    if cuda and counts.get("skipped"):
        return "failed", f"{said}: on a GPU every gpu test must run"
    if not counts.get("passed"):
        return "skipped", said
    return "ok", said


def check_gpu_tests(c: Ctx) -> dict[str, Any]:
    condition = "pytest -m gpu collects at least one test, none fails or errors" + (
        ", none is skipped" if c.cuda else " (on the CPU they skip: no CUDA)"
    )
    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if GPU_MARK.search(p.read_text())
    )
    if not files:
        why = "no gpu-marked tests found"
        return result("failed", why, reason=why, condition=condition)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    env = {**os.environ, "HPSEARCH_TEST_DATA": str(c.data)}
    rc, out = run_sub([*cmd, *files], c.left(), REPO, env)
    echo(f"$ {' '.join(cmd + files)}\n{out}")
    counts = {
        word.rstrip("s"): int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)
    }
    skips = sorted({m.strip() for m in re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", out, re.M)})
    figures = {"files": files, "counts": counts, "exit_code": rc, "skip_reasons": skips}
    status, why = judge_gpu_tests(counts, rc, c.cuda)
    md = [
        f"`pytest -m gpu {' '.join(files)}` with HPSEARCH_TEST_DATA={c.data}: {why}.",
        *(f"- skipped: {s}" for s in skips),
    ]
    if status == "skipped":
        why = "; ".join(skips) or why
    return result(status, why, md, figures, None if status == "ok" else why, condition)


DEFAULT_BUDGET_S = 450.0  # the whole kit on one H100: about 10 minutes of a 15-minute lease
# with the machine's start-up; the checks' limits below add up to it (tests/test_gpu_check.py)
TINY_BUDGET_S = 900.0  # --tiny's default: a CPU shared with others (no lease to fit), where a
# loaded machine runs the tiny kit's start-up-bound checks several times slower (3 min unloaded)


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[Ctx], dict[str, Any]]
    limit_s: float  # its share of the default budget (planned for one H100; scaled by --budget)
    cuda_only: str | None = None  # why it is skipped without CUDA (checked before it starts)


CHECKS = [
    Check("environment", "Environment", check_environment, 15),
    Check("throughput", "Throughput: seed CNN, engine vs seed pipeline vs tuned DataLoader",
          check_throughput, 70),
    Check("largest_trial", "The largest trials of the catdog space, measured against the plan",
          check_largest_trial, 45),
    Check("packing", "Several trials on one device (K processes)", check_packing, 70),
    Check("trials_per_gpu", "The --trials-per-gpu probe against the measured best K",
          check_trials_per_gpu, 40,
          cuda_only="needs CUDA: the probe measures GPU memory and kernel time "
          "(hpsearch.search.gpu_plan)"),
    Check("cuda_graphs", "Small-batch overhead: eager vs CUDA graphs", check_cuda_graphs, 25),
    Check("search", "A real smoke search with hpsearch run --workers K", check_search, 50),
    Check("auto_k", "hpsearch run picking K itself, under an inherited CUDA_VISIBLE_DEVICES",
          check_auto_k, 60,
          cuda_only="needs CUDA: hpsearch run measures K on a GPU (on the CPU it starts "
          "--workers processes, which the search check runs)"),
    Check("out_of_memory", "Out of memory: the trial fails, memory returns, the next runs",
          check_out_of_memory, 30),
    Check("gpu_tests", "The suite's gpu-marked tests", check_gpu_tests, 45),
]  # fmt: skip
BY_NAME = {c.name: c for c in CHECKS}


def deadlines(limits: Sequence[float], budget: float) -> list[float]:
    """Seconds from the kit's start by which each check must end: the running sum of the
    limits, each scaled by ``budget / DEFAULT_BUDGET_S``. A check that ends early leaves its
    time to the next, one that hangs is stopped at its own deadline, and the last deadline is
    within the budget whenever the limits add up to no more than the default."""
    scale = budget / DEFAULT_BUDGET_S
    out, total = [], 0.0
    for limit in limits:
        total += limit * scale
        out.append(total)
    return out


def verdict(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The kit's last lines: which checks failed and why, or that none did."""
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        return [
            f"FAILED: {len(failed)} of {len(results)} checks failed: "
            + ", ".join(r["name"] for r in failed),
            *(f"  {r['name']}: {r['reason']}" for r in failed),
        ]
    counts = Counter(r["status"] for r in results)
    skipped = [r for r in results if r["status"] == "skipped"]
    line = f"passed: {counts['ok']} of {len(results)} checks ok"
    if skipped:
        line += f", {len(skipped)} skipped ({', '.join(r['name'] for r in skipped)})"
    if counts["pending"]:
        line += f", {counts['pending']} not run yet"
    return [line]


# ----------------------------------------------------------------------------- the report


def render(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    mark = {"ok": "ok", "failed": "**FAILED**", "skipped": "skipped", "pending": "not run yet"}
    lines = [
        "# hpsearch GPU acceptance kit",
        "",
        f"`{meta['command']}`",
        "",
        f"Device: {meta['device']} ({meta['gpu']}); mode: {'tiny' if meta['tiny'] else 'full'} "
        f"({meta['image_size']}px); data: {meta['data']}; started {meta['started']}, "
        f"{meta['seconds']:.0f} s so far of a {meta['budget_s']:.0f} s budget.",
        "",
        "**Verdict**: " + "\n".join(verdict(results)).replace("\n  ", "; "),
        "",
        "| check | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    if meta["tiny"]:
        lines[6:6] = [
            "--tiny: every size shrunk so that the kit runs on a CPU in minutes; it proves the "
            "checks run, and its figures say nothing about performance.",
            "",
        ]
    for r in results:
        text = r["summary"] if r["status"] in ("ok", "failed") else r.get("reason") or ""
        if r["status"] == "failed" and r.get("reason") and r["reason"] not in text:
            text = f"{r['reason']} ({text})" if text else r["reason"]
        lines.append(
            f"| {r['name']} | {mark[r['status']]} | {fmt(r.get('seconds'), 0)} | "
            f"{text.replace('|', '/')} |"
        )
    for r in results:
        lines += ["", f"## {r['name']}: {r['title']}", ""]
        if r.get("condition"):
            lines += [f"Pass condition: {r['condition']}.", ""]
        if r["status"] == "skipped":
            lines.append(f"Skipped: {r['reason']}")
        elif r["status"] == "failed":
            lines.append(f"Failed: {r['reason']}")
        elif r["status"] == "pending":
            lines.append("Not run yet.")
        else:
            lines.append("Passed.")
        if r["md"]:
            lines.append("")
            lines += r["md"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the driver


def _fail(message: str) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def default_data() -> Path:
    if (REPO / "gpu-subset" / "train").is_dir():
        return REPO / "gpu-subset"
    env = os.environ.get("HPSEARCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "catdog"


def child_env(work: Path) -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        "PYTHONPATH": src + (os.pathsep + path if path else ""),  # works without pip install
        "HPSEARCH_CACHE": str(work / "cache"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("HPSEARCH_STORAGE", None)
    env.pop("HPSEARCH_ARTIFACTS", None)
    return env


def run_child(name: str, args: argparse.Namespace, ctx: Ctx, log: Path) -> dict[str, Any]:
    """One check in its own process, killed at its deadline; never raises for the check."""
    prior = ctx.work / f"prior-{name}.json"
    prior.write_text(json.dumps(ctx.prior, default=str))
    cmd = [
        *(sys.executable, str(Path(__file__).resolve()), "--check", name),
        *("--device", ctx.device, "--data", str(ctx.data), "--work", str(ctx.work)),
        *("--deadline", f"{ctx.deadline:.1f}", "--out", str(args.out), "--prior", str(prior)),
    ]
    if ctx.tiny:
        cmd.append("--tiny")
    if ctx.min_rate is not None:
        cmd += ["--min-images-per-s", repr(ctx.min_rate)]
    limit = ctx.left() + 5  # the child watches its deadline; this is the backstop
    rc, out = run_sub(cmd, limit, REPO, child_env(ctx.work))
    with log.open("a") as f:
        f.write(f"\n===== {name} (exit code {rc}) =====\n{out}")
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    if rc is None:
        why = f"timed out: stopped at its limit ({limit:.0f} s)"
    else:
        why = f"exit code {rc}: {one_line(last_line(out))}"
    return result("failed", why, reason=why)


def child_main(args: argparse.Namespace) -> None:
    prior = json.loads(args.prior.read_text()) if args.prior else {}
    ctx = Ctx(
        args.device, args.data, args.work, args.tiny, args.deadline,
        TINY if args.tiny else FULL, args.min_images_per_s, prior,
    )  # fmt: skip
    try:
        r = BY_NAME[args.check].run(ctx)
    except Exception as e:
        traceback.print_exc()
        r = result("failed", one_line(e), reason=one_line(e))
    print(RESULT_MARK + json.dumps(r, default=str), flush=True)


def positive_rate(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return x


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--tiny", action="store_true", help="every size shrunk: minutes on a CPU")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="ImageFolder root (default: gpu-subset/, else $HPSEARCH_DATA, else "
        "../shared/data/catdog)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds for the whole kit; each check's limit scales with it (default "
        f"{DEFAULT_BUDGET_S:.0f}, {TINY_BUDGET_S:.0f} with --tiny)",
    )
    p.add_argument(
        "--checks", default=",".join(BY_NAME), help="comma-separated subset of the checks"
    )
    p.add_argument(
        "--min-images-per-s",
        type=positive_rate,
        default=None,
        help=f"the throughput check's target for the engine row (default: "
        f"{TARGET_IMAGES_PER_S:,.0f} on CUDA at full size; none on the CPU or with --tiny)",
    )
    p.add_argument("--check", help=argparse.SUPPRESS)  # internal: run one check, print JSON
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--prior", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "src"))  # hpsearch without a pip install (the GPU machine)
    args = parse_args(argv)
    if args.check:
        child_main(args)
        return 0
    t_start = time.time()
    out = args.out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        _fail(f"--out {args.out}: exists and is not a folder")
    if not out.parent.is_dir():
        _fail(f"--out {args.out}: its parent folder {out.parent} does not exist")
    data = (args.data or default_data()).expanduser().resolve()
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        _fail(
            f"no data at {data}: --data needs an ImageFolder root with train/<class>/ and "
            "val/<class>/ (make one with bench/make_subset.py)"
        )
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        _fail(f"--checks: unknown {unknown or names}; choose from {', '.join(BY_NAME)}")
    if args.budget is None:
        args.budget = TINY_BUDGET_S if args.tiny else DEFAULT_BUDGET_S
    if args.budget <= 0:
        _fail(f"--budget must be positive, got {args.budget:g}")
    import torch

    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        _fail(f"--device cuda: no CUDA device visible to torch {torch.__version__}")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and has_cuda) else "cpu"
    gpu = "GPU not read yet" if device == "cuda" else "no GPU used"  # no CUDA context here
    try:
        out.mkdir(exist_ok=True)
        (out / ".write-test").write_text("")
        (out / ".write-test").unlink()
    except OSError as e:
        _fail(f"--out {args.out}: cannot write there: {e.strerror or e}")
    sizes = TINY if args.tiny else FULL
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    log = out / "log.txt"
    log.write_text("")
    checks = [BY_NAME[n] for n in names]
    ends = [t_start + d for d in deadlines([ch.limit_s for ch in checks], args.budget)]
    results = [
        {**result("pending", ""), "name": ch.name, "title": ch.title, "seconds": None}
        for ch in checks
    ]
    try:
        if sizes.subset is not None:
            ms = bench_module("make_subset")
            train, val = sizes.subset
            print(f"--tiny: a {train} + {val} image subset of {data} at {sizes.image_size}px")
            ms.make_subset(data, work / "data", train, val, sizes.image_size)
            data_used = work / "data"
        else:
            data_used = data
        meta: dict[str, Any] = {
            "command": " ".join(["python", "bench/gpu_check.py", *(argv or sys.argv[1:])]),
            "device": device,
            "gpu": gpu,
            "tiny": args.tiny,
            "image_size": sizes.image_size,
            "data": str(data) + (" (a tiny subset of it)" if args.tiny else ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start)),
            "budget_s": args.budget,
            "limits_s": {
                ch.name: round(e - t_start, 1) for ch, e in zip(checks, ends, strict=True)
            },
            "min_images_per_s": throughput_target(device, args.tiny, args.min_images_per_s),
            "platform": platform.platform(),
        }

        def write() -> None:
            meta["seconds"] = time.time() - t_start
            meta["verdict"] = verdict(results)
            meta["passed"] = not any(r["status"] == "failed" for r in results)
            (out / "report.json").write_text(
                json.dumps({"kit": meta, "checks": results}, indent=1, default=str) + "\n"
            )
            (out / "report.md").write_text(render(meta, results))

        write()
        prior: dict[str, dict[str, Any]] = {}
        for i, (ch, end) in enumerate(zip(checks, ends, strict=True)):
            t0 = time.time()
            if ch.cuda_only and device != "cuda":
                r = result("skipped", "", reason=ch.cuda_only)
            elif end - t0 < 5:
                why = f"not run: the kit's {args.budget:.0f} s budget was spent before it"
                r = result("failed", why, reason=why)
            else:
                ctx = Ctx(
                    device, data_used, work, args.tiny, end, sizes, args.min_images_per_s, prior
                )
                print(f"[{i + 1}/{len(checks)}] {ch.name} ...", flush=True)
                r = run_child(ch.name, args, ctx, log)
            if device == "cuda" and r["status"] == "skipped":  # a GPU must run every check
                why = f"skipped on a GPU: {r['reason']}"
                r = {**r, "status": "failed", "reason": why}
            if r["status"] == "ok":
                prior[ch.name] = r["figures"]
            if ch.name == "environment" and device == "cuda" and r["status"] == "ok":
                meta["gpu"] = r["figures"]["gpu"]
            results[i] = {**r, "name": ch.name, "title": ch.title, "seconds": time.time() - t0}
            text = r["summary"] if r["status"] == "ok" else r["reason"]
            print(f"[{i + 1}/{len(checks)}] {ch.name}: {r['status']}: {text}", flush=True)
            write()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"report: {out / 'report.md'} ({time.time() - t_start:.0f} s)")
    lines = verdict(results)
    print("\n".join(f"gpu_check: {ln}" if not ln.startswith(" ") else ln for ln in lines))
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
