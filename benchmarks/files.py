"""Embedding a folder of image files: time and peak memory, 2,000 vs 20,000 files.

Writes ``--n`` JPEG files (random ``--size`` square crops of scikit-image photographs) to a
temporary folder, then, each in a fresh process, embeds the list of paths with
``PretrainedFeatureExtractor(image_size=64, cache=False)``:

* ``num_workers=0``: files decoded in the main process, between forward passes;
* ``num_workers="auto"``: decoded in DataLoader workers while the network runs;
* ``preprocessing={"jpeg_draft": False}`` (``num_workers=0``): every JPEG decoded at full size,
  where the default decodes one at least twice the input size (after a 1/2, 1/4 or 1/8
  reduction) at that reduced scale;
* for contrast, the files first read into one numpy array (full decodes), then transformed.

Peak RSS is ``getrusage``'s ``ru_maxrss`` of the process (and, separately, of its
largest worker). Usage::

    python benchmarks/files.py [--n 20000] [--small 2000] [--size 128] [--image-size 64]
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


def run_one(paths_file, n, mode, image_size):
    """Child process: embed the first ``n`` paths; print a JSON line, save the embeddings beside the paths."""
    import torch  # noqa: F401  (imported before the clock starts, like a user's script)
    from PIL import Image

    from sktransfer import PretrainedFeatureExtractor

    with open(paths_file) as f:
        paths = f.read().split("\n")[:n]
    start = time.perf_counter()
    workers = "auto" if mode == "workers=auto" else 0
    preprocessing = {"jpeg_draft": False} if mode == "full decode" else None
    ext = PretrainedFeatureExtractor(image_size=image_size, cache=False, num_workers=workers,
                                     preprocessing=preprocessing)
    if mode == "array":
        X = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        out = ext.fit(X).transform(X)
    else:
        out = ext.fit(paths).transform(paths)
    seconds = time.perf_counter() - start
    np.save(os.path.join(os.path.dirname(paths_file), f"{mode}_{n}.npy"), out)
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
    parser.add_argument("--image-size", type=int, default=64, help="the extractor's image_size")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child[0], int(args.child[1]), args.child[2], args.image_size)
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
        rows, agreement = [], []
        for n in (args.small, args.n):
            for mode in MODES:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", paths_file, str(n), mode,
                     "--image-size", str(args.image_size)],
                    capture_output=True, text=True, check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            agreement.append((n, _agreement(folder, n)))
    print("\n| input | images | seconds | images/s | peak RSS main (MB) | peak RSS worker (MB) | output (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        worker = f"{r['worker_rss_mb']:.0f}" if r["mode"] == "workers=auto" else "-"
        print(f"| {MODES[r['mode']]} | {r['n']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.0f} | "
              f"{r['rss_mb']:.0f} | {worker} | {r['out_mb']:.0f} |")
    for n, (same_default, same_full, cosine) in agreement:
        print(f"\n{n} files: num_workers=0 vs 'auto', max |difference| {same_default:.2g}; jpeg_draft=False "
              f"vs the array of full decodes {same_full:.2g}; the default vs jpeg_draft=False: min cosine "
              f"{cosine:.5f}")


MODES = {
    "workers=0": "list of paths, num_workers=0",
    "workers=auto": "list of paths, num_workers='auto'",
    "full decode": "list of paths, num_workers=0, jpeg_draft=False",
    "array": "files read into one array first",
}


def _agreement(folder, n):
    """Max |difference| between the two default modes and between the two full-decode modes, and
    the min cosine between the default and the full decode."""
    z = {mode: np.load(os.path.join(folder, f"{mode}_{n}.npy")) for mode in MODES}
    a, b = z["workers=0"], z["full decode"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return (float(np.abs(a - z["workers=auto"]).max()), float(np.abs(b - z["array"]).max()),
            float(cosine.min()))


if __name__ == "__main__":
    main()
