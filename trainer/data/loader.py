"""ImageFolder, the distributed batch layout, and a multi-process loader that hands out uint8 batches.

Determinism: which samples form batch k on a rank depends only on (seed, epoch, dataset size,
batch size, world size), and a sample's augmentation only on (seed, epoch, sample index). So a
run resumed at (epoch, step) sees exactly the batches an uninterrupted run would, whatever the
number of workers.
"""
from __future__ import annotations

import logging
import math
import mmap
import multiprocessing as mp
import os
import queue
import signal
import traceback
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from trainer.data import index as file_index
from trainer.data.errors import DataError
from trainer.data.images import CorruptImage, Source
from trainer.data.index import IMAGE_EXTENSIONS
from trainer.data.randomness import SampleRandom, sample_random
from trainer.data.transforms import Views, build_views
from trainer.sections import DataSplit

log = logging.getLogger("trainer.data")

_SHUFFLE, _AUGMENT = 1, 2  # keep the two random streams apart
MAX_SUBSTITUTES = 50  # consecutive unreadable files tolerated when replacing a bad training image


class ImageFolder:
    """ROOT/<class>/<image>: classes are the sorted subfolder names, labels their positions.
    The file list comes from an index when a current one exists (see trainer.data.index); with
    `write_index` a scan is kept in one, in ROOT or else in `index_dir`."""

    def __init__(self, root, max_bad_fraction: float = 0.01, *, index_dir=None, write_index: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist or is not a directory")
        if not isinstance(max_bad_fraction, (int, float)) or not 0 <= max_bad_fraction <= 1:
            raise DataError(f"dataset.max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.max_bad_fraction = float(max_bad_fraction)
        listing = file_index.load(self.root, index_dir, write_index)
        self.classes = listing.classes
        if not self.classes:
            raise DataError(f"dataset root {self.root} has no class subfolders "
                            "(expected ROOT/<class>/<image files>)")
        empty = [name for name, files in zip(self.classes, listing.files, strict=True) if not files]
        if empty:
            shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
            raise DataError(f"dataset root {self.root}: class folder(s) with no images: {shown} "
                            f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
        self.paths = []
        for name, files in zip(self.classes, listing.files, strict=True):
            prefix = f"{self.root / name}{os.sep}"
            self.paths += [prefix + file for file in files]
        self.labels = np.repeat(np.arange(len(self.classes), dtype=np.int64), [len(f) for f in listing.files])

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as f:
            return f.read()


# ---------------------------------------------------------------------------------------------
# Batch layout (DistributedBatchSampler semantics)


def train_batches(n: int, batch_size: int, world_size: int, rank: int, *, epoch: int, seed: int,
                  shuffle: bool, drop_last: bool) -> list[np.ndarray]:
    """This rank's batches of one epoch. One permutation per (seed, epoch), the same on every
    rank; rank r takes every world_size-th index of it, so shards are disjoint. drop_last keeps
    only whole global batches; otherwise the order is padded by wrapping around (at most
    world_size - 1 repeats) so every rank runs the same number of steps."""
    order = np.random.default_rng([_SHUFFLE, seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if drop_last:
        order = order[: (n // (batch_size * world_size)) * batch_size * world_size]
    else:
        order = np.resize(order, math.ceil(n / world_size) * world_size)  # repeats from the start
    mine = order[rank::world_size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def eval_batches(n: int, batch_size: int, world_size: int, rank: int) -> list[np.ndarray]:
    """Every sample exactly once across ranks: rank r gets the contiguous block
    [r*n//W, (r+1)*n//W) (sizes differ by at most one), in dataset order."""
    mine = np.arange(rank * n // world_size, (rank + 1) * n // world_size)
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def sample_rng(seed: int, epoch: int, index: int) -> SampleRandom:
    return sample_random(_AUGMENT, seed, epoch, int(index))


# ---------------------------------------------------------------------------------------------
# Making one batch (in a worker or in the main process)


class _Job:
    """What a worker needs to make any batch: the dataset, the views and where to write them."""

    def __init__(self, dataset: ImageFolder, views: Views, seed: int, substitute_bad: bool,
                 shape: tuple[int, int, int], batch_size: int):
        self.dataset, self.views, self.seed = dataset, views, seed
        self.substitute_bad, self.shape, self.batch_size = substitute_bad, shape, batch_size
        self.num_views = len(views.pipelines)
        self.view_bytes = batch_size * int(np.prod(shape))

    def out_arrays(self, buffer) -> list[np.ndarray]:
        return [np.frombuffer(buffer, np.uint8, self.view_bytes, v * self.view_bytes)
                .reshape((self.batch_size,) + self.shape) for v in range(self.num_views)]

    def make(self, indices, epoch: int, out: list[np.ndarray]):
        """Fill out[v][:rows]; returns (labels, bad) with bad = [(path, reason), ...].
        A bad training image is replaced by the next readable one (the batch keeps its size);
        a bad evaluation image is dropped (each sample counts at most once)."""
        n = len(self.dataset)
        labels, bad = [], []
        for index in indices:
            index = int(index)
            for _ in range(MAX_SUBSTITUTES):
                try:
                    images = self.views(Source(self.dataset.read(index)), sample_rng(self.seed, epoch, index))
                    break
                except (CorruptImage, OSError) as e:
                    bad.append((self.dataset.paths[index],
                                str(e).splitlines()[0] if str(e) else type(e).__name__))
                    if not self.substitute_bad:
                        images = None
                        break
                    index = (index + 1) % n
            else:
                raise DataError(f"{MAX_SUBSTITUTES} consecutive unreadable images "
                                f"from {bad[-MAX_SUBSTITUTES][0]}")
            if images is None:
                continue
            row = len(labels)
            for v, image in enumerate(images):
                if image.shape != (self.shape[1], self.shape[2], 3):
                    raise DataError(f"{self.dataset.paths[index]} gives a "
                                    f"{image.shape[1]}x{image.shape[0]} view but others are "
                                    f"{self.shape[2]}x{self.shape[1]}; add RandomResizedCrop or "
                                    "CenterCrop (or Resize with [height, width]) to the transform")
                cv2.split(image, list(out[v][row]))     # HWC -> CHW in place, 4x faster than numpy
            labels.append(int(self.dataset.labels[index]))
        return np.asarray(labels, np.int64), bad


def _worker_main(job: _Job, tasks, results, buffers, parent_pid: int):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    outs = [job.out_arrays(b) for b in buffers]
    while True:
        try:
            task = tasks.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the trainer died (e.g. SIGKILL): do not linger
                return
            continue
        if task is None:
            return
        generation, k, slot, indices, epoch = task
        try:
            labels, bad = job.make(indices, epoch, outs[slot])
            results.put((generation, k, labels, bad, None))
        except DataError as e:
            results.put((generation, k, None, [], ("data", str(e))))
        except Exception:
            results.put((generation, k, None, [], ("bug", traceback.format_exc())))


class _Workers:
    """num_workers forked processes; batch k goes to worker k % W and is written into the shared
    buffer k % S (S = W * prefetch), so up to S batches are made ahead of the consumer."""

    def __init__(self, job: _Job, num_workers: int, prefetch: int = 2):
        ctx = mp.get_context("fork")  # workers inherit the file list and buffers without copying
        self.slots = num_workers * prefetch
        self.buffers = [mmap.mmap(-1, job.view_bytes * job.num_views) for _ in range(self.slots)]
        self.outs = [job.out_arrays(b) for b in self.buffers]
        self.tasks = [ctx.Queue() for _ in range(num_workers)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, daemon=True, name=f"simsiam-data-{i}",
                                  args=(job, self.tasks[i], self.results, self.buffers, os.getpid()))
                      for i in range(num_workers)]
        for p in self.procs:
            p.start()
        self.generation, self.outstanding, self.done = 0, 0, {}

    def run(self, batches: list, epoch: int):
        """Yield (k, labels, bad, out arrays of slot) in order; the consumer must copy out before
        asking for the next one."""
        self.drain()
        self.generation += 1
        submitted = 0
        for k in range(len(batches)):
            while submitted < len(batches) and submitted < k + self.slots:
                self.tasks[submitted % len(self.procs)].put(
                    (self.generation, submitted, submitted % self.slots, batches[submitted], epoch))
                self.outstanding += 1
                submitted += 1
            labels, bad, error = self._wait(k)
            if error:
                kind, message = error
                raise DataError(message) if kind == "data" else RuntimeError(
                    f"data worker failed:\n{message}")
            yield labels, bad, self.outs[k % self.slots]

    def _wait(self, k):
        key = (self.generation, k)
        while key not in self.done:
            self._receive()
        return self.done.pop(key)

    def _receive(self):
        while True:
            try:
                generation, k, labels, bad, error = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                for i, p in enumerate(self.procs):
                    if not p.is_alive():
                        raise RuntimeError(f"data loader worker {i} exited unexpectedly (exit code "
                                           f"{p.exitcode}); out of memory? try fewer "
                                           "loader.num_workers") from None
        self.outstanding -= 1
        if generation == self.generation:
            self.done[(generation, k)] = (labels, bad, error)

    def drain(self):
        """Wait for batches of an abandoned iteration: their buffers are about to be reused."""
        while self.outstanding:
            self._receive()
        self.done.clear()

    def close(self):
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


# ---------------------------------------------------------------------------------------------
# The loader


class Loader:
    """Iterating yields (views, labels): views a list of uint8 NCHW arrays (one per view),
    labels int64. Set the epoch (and, after a resume, the first step) with set_epoch."""

    def __init__(self, dataset: ImageFolder, views: Views, batches_for_epoch, *, batch_size: int,
                 num_workers: int, seed: int, train: bool, rank_samples: int, prefetch_factor: int = 2):
        self.dataset, self.views, self.batch_size = dataset, views, batch_size
        self.num_samples = len(dataset)
        self.bad_images = 0
        self._bad_paths: set[str] = set()
        self._rank_samples = rank_samples
        self._batches_for_epoch = batches_for_epoch
        self._num_workers, self._prefetch_factor = num_workers, prefetch_factor
        self._workers = None
        self.epoch, self.start_step = 0, 0
        self._affine_cache = {}
        shape = self._view_shape(seed)
        self._job = _Job(dataset, views, seed, substitute_bad=train, shape=shape, batch_size=batch_size)
        self._length = len(batches_for_epoch(0))

    def _view_shape(self, seed) -> tuple[int, int, int]:
        if self.views.output_size:
            h, w = self.views.output_size
            return 3, h, w
        # No op fixes the size (e.g. 32x32 images with only a flip): take the first readable one's.
        for index in range(min(len(self.dataset), MAX_SUBSTITUTES)):
            try:
                image = self.views(Source(self.dataset.read(index)), sample_rng(seed, 0, index))[0]
                return 3, image.shape[0], image.shape[1]
            except (CorruptImage, OSError):
                continue
        raise DataError(f"no readable image among the first files of {self.dataset.root}")

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self._length:
            raise DataError(f"start_step {start_step} is outside this epoch's {self._length} steps")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __iter__(self):
        batches = self._batches_for_epoch(self.epoch)[self.start_step:]
        if self._num_workers == 0:
            for indices in batches:  # in this process: fill a fresh buffer, nothing to copy
                out = self._job.out_arrays(np.empty(self._job.view_bytes * self._job.num_views, np.uint8))
                labels, bad = self._job.make(indices, self.epoch, out)
                self._count_bad(bad)
                yield [o[: len(labels)] for o in out], labels
            return
        if self._workers is None:
            self._workers = _Workers(self._job, self._num_workers, self._prefetch_factor)
        for labels, bad, out in self._workers.run(batches, self.epoch):
            self._count_bad(bad)
            # Copy out of the shared buffer: a worker refills it while the step runs.
            yield [np.array(o[: len(labels)]) for o in out], labels

    def _count_bad(self, bad):
        for path, reason in bad:
            self.bad_images += 1
            if path not in self._bad_paths:
                self._bad_paths.add(path)
                log.warning("skipping unreadable image %s: %s (%d so far on this rank)",
                            path, reason, len(self._bad_paths))
        limit = self.dataset.max_bad_fraction * self._rank_samples
        if len(self._bad_paths) > limit:
            raise DataError(f"{len(self._bad_paths)} of the {self._rank_samples} images this rank reads are "
                            "unreadable, more than "
                            f"dataset.max_bad_fraction={self.dataset.max_bad_fraction:g} "
                            f"(first: {min(self._bad_paths)})")

    def to_tensor(self, view):
        """uint8 NCHW numpy -> float32 paddle tensor on the current device, with the config's
        ToTensor (/255) and Normalize applied there (cheaper than on the CPU workers)."""
        import paddle  # only the trainer process needs paddle; the data code does not

        device = paddle.get_device()
        if device not in self._affine_cache:
            gain, bias = self.views.device_affine()
            self._affine_cache[device] = (paddle.to_tensor(gain.reshape(1, 3, 1, 1)),
                                          paddle.to_tensor(bias.reshape(1, 3, 1, 1)))
        gain, bias = self._affine_cache[device]
        return paddle.to_tensor(view).astype("float32") * gain + bias

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# Building from the PASSL DataLoader section


def _view(section: DataSplit | Mapping, where: str) -> DataSplit:
    """A validated config's split arrives as its view; a section written by hand (tests, benches)
    is checked for its shape here, and its values below, like the view's."""
    if isinstance(section, DataSplit):
        return section
    if not isinstance(section, Mapping):
        raise DataError(f"{where} must be a mapping, got {section!r}")
    for key in ("dataset", "sampler", "loader"):
        value = section.get(key) or {}
        if not isinstance(value, Mapping):
            raise DataError(f"{where}.{key} must be a mapping, got {value!r}")
    return DataSplit.of(section)


def _positive_int(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise DataError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return value


def _parse(split: DataSplit, where: str, rank: int, world_size: int, index_dir):
    if split.dataset.name != "ImageFolder":
        raise DataError(f"{where}.dataset.name: only ImageFolder is supported, got {split.dataset.name!r}")
    root = split.dataset.root
    if not root:
        raise DataError(f"{where}.dataset.root is not set (the folder with one subfolder per class)")
    try:
        # Rank 0 alone writes the file index (one writer); every rank reads a current one.
        dataset = ImageFolder(root, split.dataset.max_bad_fraction, index_dir=index_dir,
                              write_index=rank == 0)
    except OSError as e:    # while scanning: a symlink loop, an unreadable class folder, an I/O error
        raise DataError(f"{where}.dataset.root {root}: cannot read {e.filename or root}: "
                        f"{e.strerror or e}") from None
    views = build_views(split.dataset.transform, f"{where}.dataset.transform")
    batch_size = _positive_int(split.sampler.batch_size, f"{where}.sampler.batch_size")
    num_workers = _positive_int(split.loader.num_workers, f"{where}.loader.num_workers", True)
    prefetch = _positive_int(split.loader.prefetch_factor, f"{where}.loader.prefetch_factor")
    _positive_int(world_size, "world_size")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    return dataset, views, batch_size, dict(num_workers=num_workers, prefetch_factor=prefetch)


def build_train_loader(section: DataSplit | Mapping, *, rank: int, world_size: int, seed: int,
                       where: str = "DataLoader.Train", index_dir=None) -> Loader:
    """`section`: the config's DataLoader.Train view (or the section as a mapping). index_dir:
    where the dataset's file index is kept when its root is not writable (the run's output
    directory)."""
    split = _view(section, where)
    dataset, views, batch_size, workers = _parse(split, where, rank, world_size, index_dir)
    seed = int(seed or 0) % 2**63
    shuffle, drop_last = bool(split.sampler.shuffle), bool(split.sampler.drop_last)
    n = len(dataset)
    if drop_last and n < batch_size * world_size:
        raise DataError(f"{dataset.root} has {n} images, fewer than one global batch "
                        f"({batch_size} x {world_size} ranks); lower {where}.sampler.batch_size")

    def batches(epoch):
        return train_batches(n, batch_size, world_size, rank, epoch=epoch, seed=seed,
                             shuffle=shuffle, drop_last=drop_last)

    return Loader(dataset, views, batches, batch_size=batch_size, **workers, seed=seed,
                  train=True, rank_samples=max(1, sum(len(b) for b in batches(0))))


def build_eval_loader(section: DataSplit | Mapping, *, rank: int, world_size: int,
                      where: str = "DataLoader.Eval", index_dir=None) -> Loader:
    """`section`: the config's DataLoader.Eval view (or the section as a mapping)."""
    dataset, views, batch_size, workers = _parse(_view(section, where), where, rank, world_size, index_dir)
    n = len(dataset)

    def batches(epoch):
        return eval_batches(n, batch_size, world_size, rank)

    return Loader(dataset, views, batches, batch_size=batch_size, **workers, seed=0,
                  train=False, rank_samples=max(1, sum(len(b) for b in batches(0))))
