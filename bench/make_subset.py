"""A small ImageFolder subset of the photos that can travel with the working tree to a GPU machine.

The device tool carries at most 64 MiB of working tree and ``../shared`` stays behind, so the GPU
acceptance kit (``bench/gpu_check.py``) reads a subset made here: ``--train`` and ``--val``
images, balanced over the classes, drawn at random (seeded) from ``SRC/train`` and ``SRC/val``,
resized to ``--size`` x ``--size`` exactly as the engine decodes them (``hpsearch.engine.data``) and
re-encoded as JPEG, under ``DST/train/<class>/`` and ``DST/val/<class>/``. ``DST`` is git-ignored
(``/gpu-subset/`` in .gitignore); ``DST/SUBSET.json`` records how it was made.

    python bench/make_subset.py --src ../shared/data/catdog --dst gpu-subset \\
        --train 4000 --val 1000 --size 128

A folder that exists is replaced only if this script made it (it has ``SUBSET.json``).
Mistakes get one line and exit code 2; a subset over ``--max-mib`` is removed, exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

MANIFEST = "SUBSET.json"


def _fail(message: str, code: int = 2) -> None:
    print(f"make_subset: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def pick(split_dir: Path, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` files of ``split_dir``, as equal a share per class as ``n`` allows:
    ``(class, file name)``, in class and then name order."""
    from hpsearch.engine.images import list_split

    classes, files = list_split(split_dir)
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for rel, _ in files:
        cls, name = rel.split("/", 1)
        by_class[cls].append(name)
    if n < len(classes):
        _fail(f"{split_dir}: asked for {n} images, fewer than its {len(classes)} classes")
    chosen: list[tuple[str, str]] = []
    for i, cls in enumerate(classes):
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        have = by_class[cls]
        if want > len(have):
            _fail(f"{split_dir / cls} has {len(have)} images; asked for {want}")
        chosen += [(cls, name) for name in sorted(rng.sample(have, want))]
    return chosen


def make_subset(
    src: Path, dst: Path, train: int, val: int, size: int, quality: int = 90, seed: int = 0
) -> dict[str, Any]:
    """Write the subset (atomically: a temp folder renamed into place); returns the manifest."""
    from hpsearch.engine.images import decode_image
    from hpsearch.errors import DataError

    rng = random.Random(seed)
    try:
        plan = {"train": pick(src / "train", train, rng), "val": pick(src / "val", val, rng)}
    except DataError as e:
        _fail(str(e))
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def write(job: tuple[str, str, str]) -> str | None:
        split, cls, name = job
        out = tmp / split / cls / (Path(name).stem + ".jpg")
        try:
            pixels = decode_image(src / split / cls / name, size)  # (size, size, 3) uint8
        except (OSError, ValueError, Image.DecompressionBombError):
            return f"{split}/{cls}/{name}"
        Image.fromarray(pixels).save(out, "JPEG", quality=quality)
        return None

    t0 = time.perf_counter()
    for split, files in plan.items():
        for cls in {c for c, _ in files}:
            (tmp / split / cls).mkdir(parents=True, exist_ok=True)
    jobs = [(split, cls, name) for split, files in plan.items() for cls, name in files]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        skipped = [s for s in pool.map(write, jobs, chunksize=32) if s is not None]
    total = sum(f.stat().st_size for f in tmp.rglob("*.jpg"))
    manifest = {
        "src": str(src),
        "size": size,
        "quality": quality,
        "seed": seed,
        "train": len(plan["train"]) - sum(s.startswith("train/") for s in skipped),
        "val": len(plan["val"]) - sum(s.startswith("val/") for s in skipped),
        "skipped_unreadable": skipped,
        "bytes": total,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--src", type=Path, required=True, help="ImageFolder root with train/, val/")
    p.add_argument("--dst", type=Path, required=True, help="folder to write (git-ignored)")
    p.add_argument("--train", type=int, default=4000, help="training images, over all classes")
    p.add_argument("--val", type=int, default=1000, help="validation images, over all classes")
    p.add_argument("--size", type=int, default=128, help="side in pixels (images are square)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--max-mib", type=float, default=40.0, help="largest subset accepted")
    args = p.parse_args(argv)
    if not (args.src / "train").is_dir() or not (args.src / "val").is_dir():
        _fail(f"--src {args.src}: no train/ and val/ folders there (an ImageFolder root)")
    if min(args.train, args.val) < 1:
        _fail("--train and --val must be at least 1")
    if args.size < 8:
        _fail(f"--size must be at least 8, got {args.size}")
    if not 1 <= args.quality <= 95:
        _fail(f"--quality must be 1-95, got {args.quality}")
    if not args.dst.resolve().parent.is_dir():
        _fail(f"--dst {args.dst}: its parent folder does not exist")
    ours = (args.dst / MANIFEST).exists()
    if args.dst.exists() and not ours and (not args.dst.is_dir() or any(args.dst.iterdir())):
        _fail(f"--dst {args.dst} exists and was not made by this script; not replacing it")
    if args.dst.resolve() == args.src.resolve():
        _fail("--dst must differ from --src")
    m = make_subset(args.src, args.dst, args.train, args.val, args.size, args.quality, args.seed)
    mib = m["bytes"] / 2**20
    print(
        f"{args.dst}: {m['train']} train + {m['val']} val images at {m['size']}px, "
        f"{mib:.1f} MiB, in {m['seconds']}s"
        + (
            f"; skipped {len(m['skipped_unreadable'])} unreadable"
            if m["skipped_unreadable"]
            else ""
        )
    )
    if mib > args.max_mib:
        shutil.rmtree(args.dst)
        _fail(f"{mib:.1f} MiB is over --max-mib {args.max_mib:g}; removed it (lower --quality)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
