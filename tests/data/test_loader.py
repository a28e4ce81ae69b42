"""The multi-process loader: same batches whatever the worker count, device-side normalization."""
import numpy as np
import pytest

from trainer.data import build_train_loader

TWO_VIEWS = [{"TwoViewsTransform": {
    "base_transform1": [
        {"RandomResizedCrop": {"size": 28, "scale": [0.2, 1.0], "interpolation": "bicubic"}},
        {"ColorJitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}},
        {"RandomGrayscale": {"p": 0.2}},
        {"SimCLRGaussianBlur": {"p": 0.5, "sigma": [0.1, 2.0]}},
        {"RandomHorizontalFlip": None},
        {"ToTensor": None},
        {"Normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}}],
    "base_transform2": [
        {"RandomResizedCrop": {"size": 28, "scale": [0.2, 1.0], "interpolation": "bicubic"}},
        {"RandomHorizontalFlip": None},
        {"ToTensor": None},
        {"Normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}}],
}}]


def section(root, workers, batch_size=6):
    return {"dataset": {"name": "ImageFolder", "root": str(root), "transform": TWO_VIEWS},
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "drop_last": True, "shuffle": True},
            "loader": {"num_workers": workers, "use_shared_memory": True}}


def epoch(loader, e, start_step=0):
    loader.set_epoch(e, start_step)
    return list(loader)


def test_same_batches_with_any_number_of_workers(fmnist_root):
    runs = {}
    for workers in (0, 1, 3):
        loader = build_train_loader(section(fmnist_root / "train", workers), rank=0, world_size=2, seed=11)
        runs[workers] = [epoch(loader, 0), epoch(loader, 1, start_step=2)]
        loader.close()
    views, labels = runs[0][0][0]
    assert len(views) == 2 and views[0].shape == (6, 3, 28, 28) and views[0].dtype == np.uint8
    assert labels.dtype == np.int64
    assert not np.array_equal(views[0], views[1])  # two different augmentations of each image
    for workers in (1, 3):
        for a, b in zip(runs[0], runs[workers], strict=True):
            assert len(a) == len(b)
            for (va, la), (vb, lb) in zip(a, b, strict=True):
                assert np.array_equal(la, lb) and all(np.array_equal(x, y)
                                                      for x, y in zip(va, vb, strict=True))
    # A new epoch reshuffles and redraws the augmentations.
    assert not np.array_equal(runs[0][0][2][0][0], runs[0][1][0][0][0])


def test_abandoned_epoch_then_next_epoch(fmnist_root):
    """Breaking out mid-epoch (e.g. a step limit) must not mix stale batches into the next one."""
    loader = build_train_loader(section(fmnist_root / "train", 2), rank=0, world_size=1, seed=0)
    loader.set_epoch(0)
    for step, _ in enumerate(loader):
        if step == 1:
            break
    fresh = build_train_loader(section(fmnist_root / "train", 0), rank=0, world_size=1, seed=0)
    assert all(np.array_equal(a[0][0], b[0][0])
               for a, b in zip(epoch(loader, 1), epoch(fresh, 1), strict=True))
    loader.close()


def test_to_tensor_normalizes_on_the_device(fmnist_root):
    paddle = pytest.importorskip("paddle")
    loader = build_train_loader(section(fmnist_root / "train", 0), rank=0, world_size=1, seed=0)
    views, _ = next(iter(loader))
    x = loader.to_tensor(views[0])
    assert isinstance(x, paddle.Tensor) and x.dtype == paddle.float32 and x.shape == [6, 3, 28, 28]
    mean = np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.5]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x.numpy(), (views[0] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_a_killed_worker_is_an_error_not_a_hang(fmnist_root):
    import os
    import signal

    loader = build_train_loader(section(fmnist_root / "train", 2), rank=0, world_size=1, seed=0)
    next(iter(loader))
    os.kill(loader._workers.procs[0].pid, signal.SIGKILL)
    loader._workers.procs[0].join()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        epoch(loader, 1)
    loader.close()
