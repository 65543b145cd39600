"""PyTorch reference for the loader benchmark (issue 4).

The same work as `crates/pipeline` (examples/loader_bench.rs), done the way a
PyTorch user usually writes it:

* a map-style `torch.utils.data.Dataset` over the rows of the shards listed in
  each folder's `manifest.json`, read with `pyarrow.parquet` once in
  `__init__` (only the columns a batch needs; the Arrow table is shared with
  the forked workers copy-on-write). Token ids, entity masks and the 14
  CheXpert labels are padded into small NumPy arrays there; images stay in
  Arrow and are turned into a Pillow image per item
  (`np.frombuffer(row['image'], uint8).reshape(h, w)` for raw shards,
  `Image.open` for PNG/JPEG shards);
* torchvision.transforms.v2 on the Pillow image: RandomResizedCrop(224,
  scale=(0.5, 1.0)), RandomRotation(5, bilinear), ColorJitter(brightness=0.1,
  contrast=0.1), Grayscale(3), ToImage, ToDtype(float32, scale=True),
  Normalize(CLIP mean/std). (`--backend tensor` runs the same v2 transforms
  on a uint8 tensor instead of a Pillow image.);
* one DataLoader over the concatenation of the paired and the unpaired
  dataset, with a batch sampler that gives every batch 48 paired and 16
  unpaired indices (each source shuffled on its own; the sampler never ends,
  like the Rust loader without an epoch limit), `num_workers=N`,
  `persistent_workers=True`, `pin_memory=False`, default collate and the
  default prefetch_factor (2 batches per worker).

This keeps the worker count equal to the Rust loader's decode threads (two
DataLoaders zipped would need at least one worker each). Per num_workers it
prints images/s over a fixed number of batches after warm-up (one batch per
worker, so worker start-up and the first batches are not counted).

    .venv/bin/python bench/loader/reference.py MIMIC_SHARDS PADCHEST_SHARDS \
        --batches 30 --workers 1 2 [--json out.jsonl]
"""

import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torchvision.transforms import v2

CONTEXT = 77
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHEXPERT = [
    "atelectasis", "cardiomegaly", "consolidation", "edema",
    "enlarged_cardiomediastinum", "fracture", "lung_lesion", "lung_opacity",
    "no_finding", "pleural_effusion", "pleural_other", "pneumonia",
    "pneumothorax", "support_devices",
]
LABEL_COLUMNS = [f"label_{c}" for c in CHEXPERT]
LABEL_MISSING = -128


def shard_files(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    return [os.path.join(folder, s["file"]) for s in manifest["shards"]], manifest


def train_transform(backend):
    steps = []
    if backend == "tensor":
        steps.append(v2.ToImage())  # uint8 [1, H, W]
    steps += [
        v2.RandomResizedCrop(224, scale=(0.5, 1.0), antialias=True),
        v2.RandomRotation(5, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=0.1, contrast=0.1),
        v2.Grayscale(num_output_channels=3),
    ]
    if backend == "pil":
        steps.append(v2.ToImage())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]
    return v2.Compose(steps)


class ShardDataset(Dataset):
    """All rows of one shard folder."""

    def __init__(self, folder, backend="pil"):
        files, manifest = shard_files(folder)
        self.encoding = manifest["image_policy"]["encoding"]["kind"]
        cols = ["image", "image_height", "image_width", "paired", "token_ids", "entity_mask"] + LABEL_COLUMNS
        table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
        self.images = table.column("image").combine_chunks()
        self.heights = table.column("image_height").to_numpy()
        self.widths = table.column("image_width").to_numpy()
        n = table.num_rows
        self.paired = table.column("paired").to_numpy(zero_copy_only=False).astype(np.uint8)
        self.tokens = np.zeros((n, CONTEXT), np.int64)
        self.token_lengths = np.zeros(n, np.int64)
        self.entity_mask = np.zeros((n, CONTEXT), np.uint8)
        for i, (ids, mask) in enumerate(zip(table.column("token_ids").to_pylist(), table.column("entity_mask").to_pylist())):
            if ids:
                self.tokens[i, : len(ids)] = ids
                self.token_lengths[i] = len(ids)
            if mask:
                self.entity_mask[i, : len(mask)] = mask
        self.labels = np.stack(
            [table.column(c).to_numpy(zero_copy_only=False) for c in LABEL_COLUMNS], axis=1
        )
        self.labels = np.where(np.isnan(self.labels.astype(np.float64)), LABEL_MISSING, self.labels).astype(np.int8)
        self.backend = backend
        self.transform = train_transform(backend)

    def __len__(self):
        return len(self.heights)

    def image(self, i):
        buf = self.images[i].as_buffer()
        if self.encoding == "raw":
            pixels = np.frombuffer(buf, np.uint8).reshape(int(self.heights[i]), int(self.widths[i]))
            if self.backend == "tensor":
                return torch.from_numpy(pixels.copy())  # [H, W]; ToImage adds the channel
            return Image.fromarray(pixels)  # mode L
        img = Image.open(io.BytesIO(buf.to_pybytes())).convert("L")
        return torch.from_numpy(np.asarray(img).copy()) if self.backend == "tensor" else img

    def __getitem__(self, i):
        return {
            "image": self.transform(self.image(i)),
            "tokens": torch.from_numpy(self.tokens[i]),
            "token_lengths": torch.tensor(self.token_lengths[i]),
            "entity_mask": torch.from_numpy(self.entity_mask[i]),
            "paired": torch.tensor(self.paired[i]),
            "labels": torch.from_numpy(self.labels[i]),
        }


class MixedBatchSampler(Sampler):
    """Endless batches of `n_paired` indices into the first dataset of a
    ConcatDataset and `n_unpaired` into the second; each source reshuffled
    at the end of each of its passes."""

    def __init__(self, len_paired, len_unpaired, n_paired=48, n_unpaired=16, seed=0):
        self.lens = (len_paired, len_unpaired)
        self.take = (n_paired, n_unpaired)
        self.seed = seed

    def __iter__(self):
        rng = random.Random(self.seed)
        streams = []
        for k, n in enumerate(self.lens):
            offset = 0 if k == 0 else self.lens[0]

            def stream(n=n, offset=offset):
                while True:
                    order = list(range(n))
                    rng.shuffle(order)
                    for i in order:
                        yield offset + i

            streams.append(stream())
        while True:
            yield [next(streams[0]) for _ in range(self.take[0])] + [next(streams[1]) for _ in range(self.take[1])]


def make_loader(paired, unpaired, workers):
    data = ConcatDataset([paired, unpaired])
    sampler = MixedBatchSampler(len(paired), len(unpaired))
    return DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=False,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paired")
    ap.add_argument("unpaired")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backend", choices=["pil", "tensor"], default="pil")
    ap.add_argument("--json", help="append one JSON line per measurement here")
    args = ap.parse_args()

    start = time.perf_counter()
    paired = ShardDataset(args.paired, args.backend)
    unpaired = ShardDataset(args.unpaired, args.backend)
    t_open = time.perf_counter() - start
    rows = len(paired) + len(unpaired)
    print(f"pyarrow read of {rows} rows ({len(paired)} paired, {len(unpaired)} unpaired) in {t_open:.3f} s "
          f"= {rows / t_open:.0f} rows/s (dataset construction, not in the timings below)")
    results = []
    if args.json:
        results.append({"what": "pyarrow_open", "rows": rows, "seconds": t_open, "images_per_s": rows / t_open})

    for workers in args.workers:
        loader = make_loader(paired, unpaired, workers)
        it = iter(loader)
        for _ in range(max(1, workers)):  # warm-up: worker start-up, first batch of each worker
            b = next(it)
        assert b["image"].shape == (64, 3, 224, 224) and b["image"].dtype == torch.float32, b["image"].shape
        assert b["tokens"].shape == (64, CONTEXT) and b["tokens"].dtype == torch.int64
        assert int(b["paired"][:48].sum()) == 48 and int(b["paired"][48:].sum()) == 0
        n = 0
        start = time.perf_counter()
        for _ in range(args.batches):
            b = next(it)
            n += b["image"].shape[0]
        t = time.perf_counter() - start
        print(f"pytorch num_workers {workers} ({args.backend}): {n} images in {t:.2f} s = {n / t:.0f} images/s", flush=True)
        results.append({"what": f"pytorch_{args.backend}", "workers": workers, "images": n, "seconds": t, "images_per_s": n / t})
        del it, loader  # shuts the persistent workers down

    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    sys.exit(main())
