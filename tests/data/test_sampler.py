"""Batch layout across ranks (DistributedBatchSampler semantics) and exact resume positions."""
import numpy as np
import pytest

from trainer.data import build_eval_loader, build_train_loader
from trainer.data.loader import eval_batches, train_batches


def layout(n, batch, world, epoch=0, seed=0, shuffle=True, drop_last=True):
    return [train_batches(n, batch, world, r, epoch=epoch, seed=seed, shuffle=shuffle, drop_last=drop_last)
            for r in range(world)]


def test_drop_last_shards_are_disjoint_full_and_equal_in_steps():
    ranks = layout(n=103, batch=5, world=4)
    steps = {len(b) for b in ranks}
    assert steps == {103 // (5 * 4)}
    seen = np.concatenate([np.concatenate(b) for b in ranks])
    assert len(seen) == len(set(seen.tolist())) == 5 * 4 * 5  # disjoint, remainder dropped
    assert all(len(batch) == 5 for b in ranks for batch in b)


@pytest.mark.parametrize("n,world", [(103, 4), (2, 4), (1, 3)])
def test_without_drop_last_every_sample_is_used_and_steps_match(n, world):
    ranks = layout(n=n, batch=5, world=world, drop_last=False)
    assert len({len(b) for b in ranks}) == 1  # same number of steps, or collectives would hang
    assert len({len(b[-1]) for b in ranks}) == 1  # and the same batch sizes
    seen = np.concatenate([np.concatenate(b) for b in ranks])
    assert set(seen.tolist()) == set(range(n))
    assert len(seen) - n < world  # padding repeats at most world_size - 1 samples


def test_shuffle_is_one_permutation_per_epoch_shared_by_ranks():
    world, batch = 3, 4
    ranks = layout(n=60, batch=batch, world=world, epoch=5, seed=7)
    # Interleaving the ranks' shards rebuilds one permutation: every rank used the same one.
    rebuilt = np.stack([np.concatenate(b) for b in ranks], axis=1).reshape(-1)
    assert sorted(rebuilt.tolist()) == list(range(60))
    assert not np.array_equal(rebuilt, np.arange(60))
    again = layout(n=60, batch=batch, world=world, epoch=5, seed=7)
    assert all(np.array_equal(a, b)
               for ra, rb in zip(ranks, again, strict=True) for a, b in zip(ra, rb, strict=True))
    next_epoch = layout(n=60, batch=batch, world=world, epoch=6, seed=7)
    assert not np.array_equal(np.concatenate(ranks[0]), np.concatenate(next_epoch[0]))
    other_seed = layout(n=60, batch=batch, world=world, epoch=5, seed=8)
    assert not np.array_equal(np.concatenate(ranks[0]), np.concatenate(other_seed[0]))


def test_no_shuffle_keeps_dataset_order():
    (only,) = layout(n=10, batch=3, world=1, shuffle=False, drop_last=False)
    assert np.concatenate(only).tolist() == list(range(10))


@pytest.mark.parametrize("n,world,batch", [(23, 3, 4), (5, 4, 2), (2, 3, 8), (100, 8, 7)])
def test_eval_covers_every_sample_exactly_once(n, world, batch):
    parts = [np.concatenate(eval_batches(n, batch, world, r) or [np.zeros(0, int)]) for r in range(world)]
    assert np.concatenate(parts).tolist() == list(range(n))  # once each, in order when concatenated
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _section(root, transform, batch_size, workers=0, drop_last=True):
    return {"dataset": {"name": "ImageFolder", "root": str(root), "transform": transform},
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "drop_last": drop_last, "shuffle": True},
            "loader": {"num_workers": workers, "use_shared_memory": True}}


def test_eval_loader_exact_on_real_images_with_uneven_shards(fmnist_root):
    sec = _section(fmnist_root / "val", [{"ToTensor": None}], batch_size=3, drop_last=False)
    expected = build_eval_loader(sec, rank=0, world_size=1).dataset.labels
    labels = [np.concatenate([batch_labels for _, batch_labels
                              in build_eval_loader(sec, rank=r, world_size=3)])
              for r in range(3)]
    assert [len(rank_labels) for rank_labels in labels] == [6, 7, 7]  # 20 images over 3 ranks
    assert np.concatenate(labels).tolist() == expected.tolist()


def test_resume_at_a_step_gives_the_remaining_batches_exactly(fmnist_root):
    transform = [{"RandomResizedCrop": {"size": 24, "scale": [0.2, 1.0]}},
                 {"ColorJitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                                  "hue": 0.1}},
                 {"RandomHorizontalFlip": None}]
    sec = _section(fmnist_root / "train", transform, batch_size=5)
    loader = build_train_loader(sec, rank=1, world_size=2, seed=3)
    assert len(loader) == 60 // (5 * 2)
    loader.set_epoch(2)
    full = list(loader)
    resumed = build_train_loader(sec, rank=1, world_size=2, seed=3)  # a fresh process after a restart
    resumed.set_epoch(2, start_step=4)
    tail = list(resumed)
    assert len(tail) == len(full) - 4
    for (views_a, labels_a), (views_b, labels_b) in zip(full[4:], tail, strict=True):
        assert np.array_equal(labels_a, labels_b) and np.array_equal(views_a[0], views_b[0])


def test_per_sample_randomness_depends_only_on_seed_epoch_and_index():
    from trainer.data.loader import sample_rng

    def draws(seed, epoch, index):
        rng = sample_rng(seed, epoch, index)
        return [rng.random(), rng.uniform(0.2, 1.0), rng.integers(0, 7), rng.permutation(4)]

    assert draws(3, 1, 42) == draws(3, 1, 42)
    others = [draws(4, 1, 42), draws(3, 2, 42), draws(3, 1, 43), draws(0, 31, 42), draws(0, 3, 142)]
    assert all(d != draws(3, 1, 42) for d in others)     # no two of (seed, epoch, index) collide
    rng = sample_rng(0, 0, 0)
    values = [rng.integers(2, 5) for _ in range(2000)]
    assert set(values) == {2, 3, 4}                     # numpy's convention: high is excluded
    assert all(sorted(rng.permutation(5)) == list(range(5)) for _ in range(50))
