"""Embedding a folder of image files: time and peak memory, 2,000 vs 20,000 files.

Writes ``--n`` JPEG files (random ``--size`` square crops of scikit-image photographs) to a
temporary folder, then, each in a fresh process, embeds the list of paths with
``PretrainedFeatureExtractor(image_size=64, cache=False)``:

* ``num_workers=0``: files decoded in the main process, between forward passes;
* ``num_workers="auto"``: decoded in DataLoader workers while the network runs;
* for contrast, the files first read into one numpy array, then transformed.

Peak RSS is ``getrusage``'s ``ru_maxrss`` of the process (and, separately, of its
largest worker). Usage::

    python benchmarks/files.py [--n 20000] [--small 2000] [--size 128]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import machine


def write_files(folder, n, size=128, seed=0):
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
    photos = [getattr(data, name)()[..., :3] for name in names]
    if size > 256:  # large files: the photographs upscaled so that crops of `size` fit
        scale = 1.5 * size / 400
        photos = [np.asarray(Image.fromarray(p).resize((int(p.shape[1] * scale), int(p.shape[0] * scale))))
                  for p in photos]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        r = rng.integers(0, img.shape[0] - size)
        c = rng.integers(0, img.shape[1] - size)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(img[r:r + size, c:c + size]).save(path, quality=90)
        paths.append(path)
    return paths


def run_one(paths_file, n, mode):
    """Child process: embed the first ``n`` paths; print a JSON line."""
    import torch  # noqa: F401  (imported before the clock starts, like a user's script)
    from PIL import Image

    from sktransfer import PretrainedFeatureExtractor

    with open(paths_file) as f:
        paths = f.read().split("\n")[:n]
    start = time.perf_counter()
    workers = 0 if mode == "workers=0" else "auto"
    ext = PretrainedFeatureExtractor(image_size=64, cache=False, num_workers=workers)
    if mode == "array":
        X = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        out = ext.fit(X).transform(X)
    else:
        out = ext.fit(paths).transform(paths)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "n": n, "mode": mode, "seconds": seconds, "out_mb": out.nbytes / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "checksum": float(np.abs(out).sum()),
    }))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128, help="side of the square JPEG files")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child[0], int(args.child[1]), args.child[2])
        return
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = write_files(folder, args.n, args.size)
        size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
        print(f"wrote {args.n} JPEG files ({args.size}x{args.size}, {size_mb:.0f} MB) in {time.perf_counter() - start:.0f} s")
        paths_file = os.path.join(folder, "paths.txt")
        with open(paths_file, "w") as f:
            f.write("\n".join(paths))
        rows = []
        for n in (args.small, args.n):
            for mode in ("workers=0", "workers=auto", "array"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", paths_file, str(n), mode],
                    capture_output=True, text=True, check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    labels = {
        "workers=0": "list of paths, num_workers=0",
        "workers=auto": "list of paths, num_workers='auto'",
        "array": "files read into one array first",
    }
    print("\n| input | images | seconds | images/s | peak RSS main (MB) | peak RSS worker (MB) | output (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        worker = f"{r['worker_rss_mb']:.0f}" if r["mode"] == "workers=auto" else "-"
        print(f"| {labels[r['mode']]} | {r['n']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.0f} | "
              f"{r['rss_mb']:.0f} | {worker} | {r['out_mb']:.0f} |")
    same = {(r["n"]): set() for r in rows}
    for r in rows:
        same[r["n"]].add(round(r["checksum"], 0))
    print("\nsame embeddings in all three modes (checksum):",
          all(len(v) == 1 for v in same.values()))


if __name__ == "__main__":
    main()
