"""The GPU acceptance kit: one command that proves hpsearch's GPU path and writes a report.

    python bench/gpu_check.py --out DIR [--device auto|cuda|cpu] [--tiny] [--data DIR]

It runs nine checks, each in its own process with its own time limit, so that one that fails,
hangs or crashes never stops the others; every check ends ``ok``, ``failed`` (with a one-line
reason) or ``skipped`` (with why). ``DIR/report.md`` and ``DIR/report.json`` are rewritten after
each check (a kit stopped half-way still leaves a report), ``DIR/log.txt`` holds every child's
output.

1. environment: torch, CUDA, cuDNN, the GPU's name and memory, Optuna and hpsearch versions;
2. throughput: the seed CNN at 128px (bf16 on CUDA), the rows of bench/throughput.py: the seed's
   pipeline as written, a tuned DataLoader, the hpsearch engine, and the engine's no-pipeline bound;
3. largest trial: the largest trials the catdog space allows
(hpsearch.search.gpu_plan.largest_specs); 4. packing: aggregate images/s with K = 1, 2, 4, 8
   training processes side by side (bench/packing.py);
5. trials per GPU: the K that ``hpsearch run``'s ``--trials-per-gpu`` probe picks
   (hpsearch.search.gpu_plan), beside the measured best K (CUDA only);
6. CUDA graphs: the batch-32 training step eager vs captured in a CUDA graph, timed, and whether
   the losses agree (CUDA only; on the CPU the eager step is measured);
7. search: a real smoke-sized ``hpsearch run --workers K`` on the device (a temp SQLite file),
   exact trial counts, and ``hpsearch predict`` loading the best checkpoint on the CPU;
8. out of memory: a trial made to run out of device memory fails with its reason, the memory it
   held is returned (``torch.cuda.memory_reserved`` before and after) and the next trial runs (on
   the CPU: the host allocator, with the process's resident memory);
9. gpu tests: the suite's tests marked ``gpu`` (pytest -m gpu), pass/skip counts.

The data is an ImageFolder root (``--data``; default ``gpu-subset/`` made by bench/make_subset.py,
else ``$HPSEARCH_DATA``, else ``../shared/data/catdog``). Rows that need more images than it has
repeat it in memory. ``--tiny`` makes a tiny subset of it and shrinks every size, so that the
whole kit runs on a 2-core CPU in a few minutes (``--device cpu --tiny`` is what the test suite
runs). On one H100 the full kit is planned to take under 8 minutes (``--budget``, default 450 s:
a check that would start past it is skipped, one still running at it is stopped).
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
from collections.abc import Callable, Sequence
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
    packing_ks: tuple[int, ...]
    packing_steps: int
    graph_steps: int
    search_epochs: int | None  # None: the smoke study's own
    subset: tuple[int, int] | None  # (train, val) images of a subset made from --data first


FULL = Sizes(
    image_size=128,
    row_steps={"seed": 150, "tuned": 400, "engine": 3000, "bound_engine": 1500},
    largest_steps=40,
    largest_batch=None,
    packing_ks=(1, 2, 4, 8),
    packing_steps=800,
    graph_steps=200,
    search_epochs=None,
    subset=None,
)
TINY = Sizes(
    image_size=32,
    row_steps={"seed": 6, "tuned": 6, "engine": 12, "bound_engine": 6},
    largest_steps=1,
    largest_batch=8,
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
    k: int | None = None  # the probe's trials per GPU, for the search
    sizes: Sizes = field(default=FULL)

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
) -> dict[str, Any]:
    return {
        "status": status,
        "reason": reason,
        "summary": summary,
        "md": list(md),
        "figures": figures or {},
    }


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

    v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
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
    return result("ok", summary, md, env)


def check_throughput(c: Ctx) -> dict[str, Any]:
    tp = bench_module("throughput")
    size = c.sizes.image_size
    workers = os.cpu_count() or 1
    rows: dict[str, dict[str, Any]] = {}
    errors = []
    for row, steps in c.sizes.row_steps.items():
        cmd = [
            *(sys.executable, str(BENCH / "throughput.py"), "--row", row),
            *("--data", str(c.data), "--image-size", str(size), "--steps", str(steps)),
            *("--device", c.device, "--workers", str(workers)),
        ]
        reserve = 20.0 * (len(c.sizes.row_steps) - len(rows) - len(errors) - 1)
        code, out = run_sub(cmd, c.left(reserve), REPO)
        echo(f"$ {' '.join(cmd)}\n{out}")
        if code == 0:
            rows[row] = {"steps": steps, **json.loads(last_line(out))}
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
    figures: dict[str, Any] = {"rows": rows, "image_size": size, "device": c.device}
    if "rate" in engine:
        md += [
            "",
            f"Engine cache: {engine['images']} images decoded in {engine['build_s']:.1f} s, "
            f"{engine['held_mib']:.0f} MiB held on the device"
            + (f", peak {engine['peak_cuda_mib']:.0f} MiB allocated." if c.cuda else "."),
        ]
        if c.cuda and seed and tuned:
            targets = {
                ">= 20,000 img/s": engine["rate"] >= 20_000,
                ">= 10x the seed pipeline": engine["rate"] >= 10 * seed,
                ">= 3x a tuned DataLoader": engine["rate"] >= 3 * tuned,
            }
            figures["targets"] = targets
            md.append(
                "Targets (throughput issue, on one H100): "
                + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items())
            )
        elif not c.cuda:
            md.append("The targets (20,000 img/s, 10x seed, 3x tuned) apply to an H100 only.")
    if "rate" in engine and seed and tuned:
        summary = (
            f"engine {fmt(engine['rate'], 0)} img/s = {engine['rate'] / seed:.1f}x seed "
            f"pipeline, {engine['rate'] / tuned:.1f}x tuned DataLoader ({c.device}, {size}px)"
        )
    else:
        summary = "; ".join(errors) or "incomplete"
    if errors:
        return result("failed", summary, md, figures, reason="; ".join(errors))
    return result("ok", summary, md, figures)


def _repeat(data: Any, n: int, val: int) -> Any:
    """``data`` with exactly ``n`` training rows (the set repeated in memory) and ``val`` val."""
    import torch

    idx = torch.arange(n, device=data.device) % len(data.train_labels)
    return replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        val_images=data.val_images[:val],
        val_labels=data.val_labels[:val],
    )


def check_largest_trial(c: Ctx) -> dict[str, Any]:
    import gc

    import torch

    from hpsearch.config import load_study, parse_set
    from hpsearch.engine.data import load_data
    from hpsearch.engine.train import fit, resolve_device
    from hpsearch.search.gpu_plan import largest_specs

    size = c.sizes.image_size
    cfg = load_study(
        "catdog", [parse_set(f"data.root={c.data}"), parse_set(f"data.image_size={size}")]
    )
    dev = resolve_device(c.device)
    data = load_data(cfg.data, dev)
    rows = []
    for spec in largest_specs(cfg):
        if c.sizes.largest_batch is not None:
            spec = replace(spec, batch_size=min(spec.batch_size, c.sizes.largest_batch))
        spec = replace(spec, epochs=1)
        bs = spec.batch_size
        fit(spec, _repeat(data, 2 * bs, bs), eval_batch_size=bs)  # warm-up, cudnn autotune
        if c.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r = fit(spec, _repeat(data, c.sizes.largest_steps * bs, bs), eval_batch_size=bs)
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
                "n_params": r.n_params,
                "images_per_s": r.train_images_per_s,
                "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if c.cuda else None,
            }
        )
        del r
        gc.collect()
    md = [
        f"The largest trials of the catdog space (fewest and most blocks), {size}px on "
        f"{c.device}, {c.sizes.largest_steps} timed step(s) after a 2-step warm-up"
        + (f"; --tiny caps the batch at {c.sizes.largest_batch}" if c.sizes.largest_batch else "")
        + ".",
        "",
        "| blocks | channels | kernels | head | dense | batch | params | img/s | peak MiB |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['n_blocks']} | {r['channels']} | {r['kernel_sizes']} | {r['head']} | "
            f"{r['dense_units']} | {r['batch_size']} | {r['n_params']:,} | "
            f"{fmt(r['images_per_s'])} | {fmt(r['peak_reserved_mib'], 0)} |"
        )
    top = max(rows, key=lambda r: r["n_params"])
    summary = (
        f"{len(rows)} largest trials trained; biggest {top['n_params'] / 1e6:.1f}M params at "
        f"{fmt(top['images_per_s'], 0)} img/s"
        + (f", peak {fmt(top['peak_reserved_mib'], 0)} MiB" if c.cuda else "")
    )
    return result("ok", summary, md, {"rows": rows, "image_size": size})


def check_packing(c: Ctx) -> dict[str, Any]:
    size, steps = c.sizes.image_size, c.sizes.packing_steps
    rows: list[dict[str, Any]] = []
    error = None
    for i, k in enumerate(c.sizes.packing_ks):
        code = (
            f"import argparse, json, pathlib, sys; sys.path.insert(0, {str(BENCH)!r}); "
            "import packing; "
            f"ns = argparse.Namespace(data=pathlib.Path({str(c.data)!r}), image_size={size}, "
            f"steps={steps}, device={c.device!r}); "
            f"print(json.dumps(packing.run(ns, 'seed', {k})))"
        )
        reserve = 15.0 * (len(c.sizes.packing_ks) - i - 1)
        rc, out = run_sub([sys.executable, "-c", code], c.left(reserve), REPO)
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
    figures: dict[str, Any] = {"rows": rows, "image_size": size}
    if rows:
        best = max(rows, key=lambda r: r["aggregate"])
        figures["best_k"] = best["k"]
        summary = (
            f"best aggregate at K={best['k']}: {fmt(best['aggregate'], 0)} img/s = "
            f"{best['aggregate'] / rows[0]['aggregate']:.2f}x K=1"
        )
    else:
        summary = error or "no rows"
    if error:
        md.append(f"\nStopped: {error}")
        return result("failed", summary, md, figures, reason=error)
    return result("ok", summary, md, figures)


def check_trials_per_gpu(c: Ctx) -> dict[str, Any]:
    from hpsearch.search.gpu_plan import probe, trials_per_gpu

    size = c.sizes.image_size
    p = probe(["catdog", f"data.root={c.data}", f"data.image_size={size}"], "0")
    k, why = trials_per_gpu(p)
    md = [
        f"`hpsearch run --study catdog` without `--trials-per-gpu` would start {k} workers per "
        f"GPU ({size}px):",
        "",
        f"> {why}",
    ]
    return result("ok", f"the probe picks K={k}", md, {"k": k, "why": why, "probe": asdict(p)})


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
        )
    e2, _ = eager()  # eager again: the run-to-run noise (cuDNN's algorithms need not be exact)

    model, opt = fresh(True)
    losses = torch.zeros(n, device=dev)
    static_x, static_y = bank[0][0].clone(), bank[0][1].clone()
    side = torch.cuda.Stream()
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
        f"{'yes' if keep else 'no'}; the engine runs eager today.",
    ]
    summary = (
        f"eager {eager_ms:.3f} ms, graph {graph_ms:.3f} ms ({speedup:.2f}x); losses "
        f"{'agree' if agree else 'DISAGREE'}"
    )
    if not agree:
        return result("failed", summary, md, figures, reason="graph and eager losses disagree")
    return result("ok", summary, md, figures)


def check_search(c: Ctx) -> dict[str, Any]:
    from collections import Counter

    import optuna

    k = c.k or 2
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
    md = [
        f"`hpsearch run --study smoke --trials {trials} --workers {k}` on {c.device} with a "
        "temp SQLite file, then `hpsearch predict --device cpu` with no GPU visible:",
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
    if problems:
        return result("failed", summary, md, figures, reason="; ".join(problems))
    return result("ok", summary, md, figures)


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

    mem: list[dict[str, float]] = []
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
    if problems:
        return result("failed", summary, md, figures, reason="; ".join(problems))
    return result("ok", summary, md, figures)


GPU_MARK = re.compile(r"\bpytest\.mark\.gpu\b")  # a decorator or a module's pytestmark


def check_gpu_tests(c: Ctx) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if GPU_MARK.search(p.read_text())
    )
    if not files:
        return result("failed", "no gpu-marked tests found", reason="no gpu-marked tests found")
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
    summary = ", ".join(f"{n} {w}" for w, n in counts.items() if w != "deselected") or "none ran"
    md = [
        f"`pytest -m gpu {' '.join(files)}` with HPSEARCH_TEST_DATA={c.data}: {summary}.",
        *(f"- skipped: {s}" for s in skips),
    ]
    if rc is None:
        return result("failed", "timed out", md, figures, reason="pytest -m gpu timed out")
    if rc != 0 or counts.get("failed") or counts.get("error"):
        return result("failed", summary, md, figures, reason=f"pytest exit code {rc}: {summary}")
    if not counts.get("passed") and counts.get("skipped"):
        why = "; ".join(skips) or "skipped"
        return result("skipped", summary, md, figures, reason=why)
    return result("ok", summary, md, figures)


DEFAULT_BUDGET_S = 450.0  # the whole kit on one H100; the checks' limits below add up to more


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[Ctx], dict[str, Any]]
    limit_s: float  # its share of the budget on a GPU
    cuda_only: str | None = None  # why it is skipped without CUDA (checked before it starts)


CHECKS = [
    Check("environment", "Environment", check_environment, 60),
    Check("throughput", "Throughput: seed CNN, engine vs seed pipeline vs tuned DataLoader",
          check_throughput, 150),
    Check("largest_trial", "The largest trials of the catdog space", check_largest_trial, 75),
    Check("packing", "Several trials on one device (K processes)", check_packing, 150),
    Check("trials_per_gpu", "The --trials-per-gpu probe", check_trials_per_gpu, 90,
          cuda_only="needs CUDA: the probe measures GPU memory and kernel time "
          "(hpsearch.search.gpu_plan)"),
    Check("cuda_graphs", "Small-batch overhead: eager vs CUDA graphs", check_cuda_graphs, 90),
    Check("search", "A real smoke search with hpsearch run --workers K", check_search, 150),
    Check("out_of_memory", "Out of memory: the trial fails, memory returns, the next runs",
          check_out_of_memory, 90),
    Check("gpu_tests", "The suite's gpu-marked tests", check_gpu_tests, 180),
]  # fmt: skip
BY_NAME = {c.name: c for c in CHECKS}


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
        if r["status"] == "skipped":
            lines.append(f"Skipped: {r['reason']}")
        elif r["status"] == "failed":
            lines.append(f"Failed: {r['reason']}")
        elif r["status"] == "pending":
            lines.append("Not run yet.")
        if r["md"]:
            if r["status"] != "ok":
                lines.append("")
            lines += r["md"]
    return "\n".join(lines) + "\n"


def side_by_side(results: list[dict[str, Any]]) -> None:
    """The probe's K beside the packing check's best measured K."""
    by = {r["name"]: r for r in results}
    probe, packing = by.get("trials_per_gpu"), by.get("packing")
    if not probe or not packing or probe["status"] != "ok" or "best_k" not in packing["figures"]:
        return
    best = packing["figures"]["best_k"]
    rows = {r["k"]: r["aggregate"] for r in packing["figures"]["rows"]}
    k = probe["figures"]["k"]
    near = max((kk for kk in rows if kk <= k), default=None)
    line = (
        f"Side by side: the probe picks K={k}; the packing check's best aggregate was at K={best}"
    )
    if near is not None and rows.get(1):
        line += f" (K={near} measured {rows[near] / rows[1]:.2f}x K=1)"
    probe["md"] = [*probe["md"], "", line + "."]
    probe["figures"]["best_measured_k"] = best


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
    cmd = [
        *(sys.executable, str(Path(__file__).resolve()), "--check", name),
        *("--device", ctx.device, "--data", str(ctx.data), "--work", str(ctx.work)),
        *("--deadline", f"{ctx.deadline:.1f}", "--out", str(args.out)),
    ]
    if ctx.tiny:
        cmd.append("--tiny")
    if ctx.k is not None:
        cmd += ["--k", str(ctx.k)]
    limit = ctx.left() + 10  # the child watches its deadline; this is the backstop
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
    ctx = Ctx(
        args.device, args.data, args.work, args.tiny, args.deadline, args.k,
        TINY if args.tiny else FULL,
    )  # fmt: skip
    try:
        r = BY_NAME[args.check].run(ctx)
    except Exception as e:
        traceback.print_exc()
        r = result("failed", one_line(e), reason=one_line(e))
    print(RESULT_MARK + json.dumps(r, default=str), flush=True)


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
        default=DEFAULT_BUDGET_S,
        help="seconds for the whole kit; each check's limit scales with it",
    )
    p.add_argument(
        "--checks", default=",".join(BY_NAME), help="comma-separated subset of the checks"
    )
    p.add_argument("--check", help=argparse.SUPPRESS)  # internal: run one check, print JSON
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
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
    deadline_all = t_start + args.budget
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
            "platform": platform.platform(),
        }
        checks = [BY_NAME[n] for n in names]
        results = [
            {**result("pending", ""), "name": ch.name, "title": ch.title, "seconds": None}
            for ch in checks
        ]

        def write() -> None:
            meta["seconds"] = time.time() - t_start
            side_by_side(results)
            (out / "report.json").write_text(
                json.dumps({"kit": meta, "checks": results}, indent=1, default=str) + "\n"
            )
            (out / "report.md").write_text(render(meta, results))

        write()
        k: int | None = None
        for i, ch in enumerate(checks):
            t0 = time.time()
            left = deadline_all - t0
            if ch.cuda_only and device != "cuda":
                r = result("skipped", "", reason=ch.cuda_only)
            elif left < 15:
                r = result("skipped", "", reason=f"out of the kit's {args.budget:.0f} s budget")
            else:  # its own limit, and never past the kit's deadline
                # a check's share grows with --budget (a loaded or slower machine asks for more)
                share = ch.limit_s * args.budget / DEFAULT_BUDGET_S
                ctx = Ctx(device, data_used, work, args.tiny, t0 + min(share, left), k, sizes)
                print(f"[{i + 1}/{len(checks)}] {ch.name} ...", flush=True)
                r = run_child(ch.name, args, ctx, log)
            if ch.name == "trials_per_gpu" and r["status"] == "ok":
                k = int(r["figures"]["k"])
            if ch.name == "environment" and device == "cuda" and r["status"] == "ok":
                meta["gpu"] = r["figures"]["gpu"]
            results[i] = {**r, "name": ch.name, "title": ch.title, "seconds": time.time() - t0}
            text = r["summary"] if r["status"] == "ok" else r["reason"]
            print(f"[{i + 1}/{len(checks)}] {ch.name}: {r['status']}: {text}", flush=True)
            write()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"report: {out / 'report.md'} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
