"""Decoding photos for the cache: hpsearch's PIL path vs torchvision's, on the same files.

hpsearch decodes every image once per (data set, image size) with
``hpsearch.engine.images.decode_image``: PIL with ``draft`` (libjpeg decodes a JPEG at 1/2, 1/4 or
1/8 scale when the target is that much smaller), RGB, then a bilinear resize to SxS. The candidate
is ``torchvision.io.decode_image`` (full-size decode) followed by
``torchvision.transforms.v2.functional.resize`` (bilinear, antialiased). Both run in one thread
over the same files, interleaved for ``--rounds`` rounds; the table prints the best round of each,
torchvision's time over PIL's (below 1: torchvision is faster), and how far apart their pixels are
(0-255 scale). It also times importing ``torchvision.datasets.folder`` (what adopting its
ImageFolder helpers costs every command that lists images).

    python bench/decode.py --data ../shared/data/catdog/train --n 500 --size 64 128
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hpsearch.engine.images import decode_image


def pil(path: Path, size: int) -> np.ndarray:
    return decode_image(path, size)


def tv(path: Path, size: int) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2.functional import resize

    chw = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    out = resize(chw, [size, size], antialias=True)
    return out.permute(1, 2, 0).numpy()


def timed(fn: Callable[[Path, int], np.ndarray], files: list[Path], size: int) -> float:
    t0 = time.perf_counter()
    for f in files:
        fn(f, size)
    return time.perf_counter() - t0


def import_seconds(module: str) -> float:
    code = f"import time, torch; t = time.perf_counter(); import {module}; "
    code += "print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="an ImageFolder split (class folders)")
    p.add_argument("--n", type=int, default=500, help="photos, drawn with a fixed seed")
    p.add_argument("--size", type=int, nargs="+", default=[64, 128])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    files = sorted(f for c in sorted(args.data.iterdir()) for f in c.iterdir())
    files = random.Random(0).sample(files, min(args.n, len(files)))
    print(f"{len(files)} photos from {args.data}, one thread, best of {args.rounds} rounds")
    print("| size | PIL + draft (hpsearch) | torchvision decode + resize | time tv/PIL", end="")
    print(" | mean abs pixel diff |\n|---|---|---|---|---|")
    for size in args.size:
        best = {"pil": float("inf"), "tv": float("inf")}
        for _ in range(args.rounds):
            best["pil"] = min(best["pil"], timed(pil, files, size))
            best["tv"] = min(best["tv"], timed(tv, files, size))
        diff = np.mean([np.abs(pil(f, size).astype(np.int16) - tv(f, size)).mean() for f in files])
        pil_rate, tv_rate = len(files) / best["pil"], len(files) / best["tv"]
        print(
            f"| {size} | {pil_rate:.0f} img/s | {tv_rate:.0f} img/s "
            f"| {best['tv'] / best['pil']:.2f} | {diff:.2f} / 255 |"
        )
    folder = import_seconds("torchvision.datasets.folder")
    print(f"import torchvision.datasets.folder after torch: {folder:.2f} s")


if __name__ == "__main__":
    main()
