"""Loader throughput: DALI against the torch backend at the same thread count.

Two data sets, training loaders (shuffle + augmentation), CPU output:
  * imagenet-like: a synthetic ImageFolder tree of 500x375 JPEGs (ImageNet's typical size and
    file size, ~100 KB), generated into a temp dir; ImageNet training recipe to 224px, RGB.
  * fashion-mnist: the prepared tree's train split (28px grayscale PNGs), at 28px, with the
    augmentation off (the default run) and on.

A repeat times ``--batches`` consecutive batches of a running loader (epochs wrap as in
training). Each backend runs in two blocks (DALI, torch, DALI, torch), each block with warm-up
repeats first, so the prefetch queues filled while the other backend ran are not counted and
drift of this shared machine hits both. We report the median and 20/80th percentiles of
images/s and the DALI/torch ratio of the medians; also images per CPU-second (this process's
CPU time, DALI's threads included, plus the torch workers'), whose ratio moves less when a
neighbour on this shared machine takes a core.

``--threads`` is DALI's ``num_threads`` and the DataLoader's ``num_workers``; the consuming
process runs torch with one thread (it normalises the torch backend's uint8 batches).

    .venv/bin/python bench/bench_loader.py            # ~4 min on 2 cores
    .venv/bin/python bench/bench_loader.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RESULTS_DIR, loadavg, new_doc, time_interleaved, write_result

from shiftnas.data import build_loader, default_data_root, prepare_fashion_mnist
from shiftnas.data.prepare import DEFAULT_SOURCE, SOURCE_FILES

TARGET_IMAGENET_RATIO = 1.5  # the target: DALI >= 1.5x the torch backend on the ImageNet-like tree


def make_imagenet_like(root: Path, classes: int, per_class: int, seed: int = 0) -> dict:
    """``root/train/<class>/*.JPEG``: 500x375 smooth colour fields + texture + noise, q=90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for c in range(classes):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            w, h = (500, 375) if i % 4 else (375, 500)  # some portrait images, as in ImageNet
            base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
                (w, h), Image.BICUBIC
            )
            mid = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)).resize(
                (w, h), Image.BILINEAR
            )
            img = np.asarray(base, np.float32) * 0.6 + np.asarray(mid, np.float32) * 0.4
            img += rng.normal(0, 14, img.shape)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
            (d / f"n{c:08d}_{i}.JPEG").write_bytes(buf.getvalue())
            sizes.append(len(buf.getvalue()))
    return {
        "images": classes * per_class,
        "classes": classes,
        "mean_file_kb": round(float(np.mean(sizes)) / 1e3, 1),
        "size": "500x375 (1 in 4 portrait 375x500)",
        "jpeg_quality": 90,
    }


def _stream(loader):
    while True:
        yield from loader


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(loader) -> float:
    """CPU time of this process (DALI's threads, the consumer) plus the torch backend's workers."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    it = getattr(getattr(loader, "_dl", None), "_iterator", None)  # persistent DataLoader workers
    for w in getattr(it, "_workers", []):
        try:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _time_repeats(stream, loader, batches: int, warmup: int, n: int) -> tuple[list[float], list[float]]:
    """images/s of wall time and images per CPU-second, per repeat of `batches` batches, after
    `warmup` untimed repeats (`harness.time_interleaved` of the one loader)."""
    images, cpu = [], []

    def repeat():
        c0, count = _cpu_seconds(loader), 0
        for _ in range(batches):
            x, _ = next(stream)
            count += x.shape[0]
        cpu.append(_cpu_seconds(loader) - c0)
        images.append(count)

    wall = time_interleaved({"loader": repeat}, warmup, n)["loader"]
    images, cpu = images[warmup:], cpu[warmup:]
    return [i / t for i, t in zip(images, wall)], [i / max(c, 1e-9) for i, c in zip(images, cpu)]


def _summary(samples: list[float], per_cpu: list[float]) -> dict:
    q = np.percentile(samples, [20, 50, 80])
    return {
        "median_img_s": round(float(q[1]), 1),
        "p20_img_s": round(float(q[0]), 1),
        "p80_img_s": round(float(q[2]), 1),
        "median_img_per_cpu_s": round(float(np.median(per_cpu)), 1),
        "repeats": len(samples),
        "samples_img_s": [round(s, 1) for s in samples],
    }


def bench_case(
    name: str,
    root: Path,
    split: str,
    *,
    image_size: int,
    augment: bool,
    batch_size: int,
    batches: int,
    repeats: int,
    warmup: int,
    threads: int,
) -> dict:
    kw = {
        "batch_size": batch_size,
        "image_size": image_size,
        "train": True,
        "augment": augment,
        "num_threads": threads,
        "device": "cpu",
        "seed": 0,
    }
    load_start = loadavg()[0]
    loaders = {b: build_loader(root, split, backend=b, **kw) for b in ("dali", "torch")}
    streams = {b: _stream(ld) for b, ld in loaders.items()}
    samples = {"dali": [], "torch": []}
    per_cpu = {"dali": [], "torch": []}
    blocks = 2
    for block in range(blocks):
        for backend in ("dali", "torch"):
            k = repeats // blocks + (1 if block < repeats % blocks else 0)
            wall, cpu = _time_repeats(streams[backend], loaders[backend], batches, warmup, k)
            samples[backend] += wall
            per_cpu[backend] += cpu
            print(
                f"  {name} block {block} {backend:5s}: {statistics.median(samples[backend]):8.0f} img/s",
                flush=True,
            )
    res = {
        "case": name,
        "root": str(root),
        "split": split,
        "image_size": image_size,
        "augment": augment,
        "batch_size": batch_size,
        "batches_per_repeat": batches,
        "dali": _summary(samples["dali"], per_cpu["dali"]),
        "torch": _summary(samples["torch"], per_cpu["torch"]),
    }
    # A busy neighbour on this shared machine shows here (2 cores: > ~2.5 means we shared).
    res["load_avg_1min_start_end"] = [load_start, loadavg()[0]]
    res["ratio_dali_over_torch"] = round(
        res["dali"]["median_img_s"] / res["torch"]["median_img_s"], 2
    )
    # The same ratio per CPU-second: less sensitive to a neighbour taking a core.
    res["ratio_per_cpu_s"] = round(
        res["dali"]["median_img_per_cpu_s"] / res["torch"]["median_img_per_cpu_s"], 2
    )
    return res


def versions() -> dict:
    import nvidia.dali
    import PIL
    import torchvision

    return {"torchvision": torchvision.__version__, "dali": nvidia.dali.__version__, "pillow": PIL.__version__}


def fmnist_cases(args) -> list[dict]:
    """The Fashion-MNIST cases (augmentation off, on); none without the prepared tree or source."""
    out = []
    fm = Path(args.fmnist_root)
    if (
        not all((Path(DEFAULT_SOURCE) / f).is_file() for f in SOURCE_FILES.values())
        and not (fm / "PREPARED.json").is_file()
    ):
        print(f"skipping Fashion-MNIST: no {fm} and no {DEFAULT_SOURCE} (make data)")
    else:
        prepare_fashion_mnist(fm)
        for augment in (False, True):
            out.append(
                bench_case(
                    f"fashion-mnist-28-train{'-aug' if augment else ''}",
                    fm,
                    "train",
                    image_size=28,
                    augment=augment,
                    batch_size=256,
                    batches=16 if not args.quick else 4,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    threads=args.threads,
                )
            )

    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="DALI threads = DataLoader workers (default: 2)"
    )
    ap.add_argument(
        "--repeats", type=int, default=10, help="timed repeats per backend and case (default: 10)"
    )
    ap.add_argument(
        "--warmup", type=int, default=2, help="untimed repeats before each block (default: 2)"
    )
    ap.add_argument(
        "--images", type=int, default=640, help="images in the ImageNet-like tree (default: 640)"
    )
    ap.add_argument("--fmnist-root", default=str(default_data_root() / "fashion-mnist"))
    ap.add_argument("--out", default=str(RESULTS_DIR / "loader_cpu.json"))
    ap.add_argument(
        "--quick", action="store_true", help="3 repeats, 1 warm-up, small trees: a smoke run"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.images = 3, 1, 160
    torch.set_num_threads(1)
    report = new_doc(
        "bench/bench_loader.py",
        threads=args.threads,
        output_device="cpu",
        consumer_torch_threads=1,
        versions=versions(),
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="shiftnas-bench-loader-") as tmp:
        t0 = time.perf_counter()
        tree = make_imagenet_like(Path(tmp), classes=10, per_class=max(1, args.images // 10))
        print(f"imagenet-like tree: {tree} ({time.perf_counter() - t0:.1f}s)", flush=True)
        r = bench_case(
            "imagenet-like-224-train",
            Path(tmp),
            "train",
            image_size=224,
            augment=True,
            batch_size=64,
            batches=8 if not args.quick else 2,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
        )
        r["tree"] = tree
        r["target_ratio"] = TARGET_IMAGENET_RATIO
        r["meets_target"] = r["ratio_dali_over_torch"] >= TARGET_IMAGENET_RATIO
        r.pop("root")
        results.append(r)

    results += fmnist_cases(args)

    report["results"] = results
    out = Path(args.out)
    write_result(out, report)
    print(f"\n{'case':<28} {'DALI img/s':>11} {'torch img/s':>12} {'ratio':>6} {'per CPU-s':>10}")
    for r in results:
        print(
            f"{r['case']:<28} {r['dali']['median_img_s']:>11.0f} {r['torch']['median_img_s']:>12.0f} "
            f"{r['ratio_dali_over_torch']:>6.2f} {r['ratio_per_cpu_s']:>10.2f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
