"""Exact top-k accuracy over a validation set split across ranks.

Every rank counts its correct predictions and its images; one all-reduce of the sums gives
(sum of correct) / (number of validation images) over the whole set. Averaging per-rank accuracies
would be wrong when shards differ in size (they do when the set does not divide by the world
size), and padding a shard would count images twice. The eval loader gives every image exactly once.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F


def topk_hits(logits: paddle.Tensor, labels: paddle.Tensor, ks: tuple[int, ...]) -> dict[str, paddle.Tensor]:
    """{"top<k>": how many rows have their label among the top k logits} as device tensors
    (k capped at the class count)."""
    k_max = min(max(ks), logits.shape[1])
    _, top = paddle.topk(logits, k_max, axis=1)
    hits = (top == labels.reshape([-1, 1])).astype("int64")
    return {f"top{k}": hits[:, :min(k, k_max)].sum() for k in ks}


@paddle.no_grad()
def evaluate(model, loader, ks: tuple[int, ...] = (1, 5), world_size: int = 1) -> dict:
    """{'top1': .., 'top5': .., 'loss': .., 'images': N} over the whole set (all ranks)."""
    model.eval()
    sums = paddle.zeros([len(ks) + 2], dtype="float64")  # correct@k..., summed loss, image count
    for views, labels in loader:
        x = loader.to_tensor(views[0])
        y = paddle.to_tensor(labels)
        logits = model(x).astype("float32")
        hits = topk_hits(logits, y, ks)
        sums += paddle.stack([*(hits[f"top{k}"].astype("float64") for k in ks),
                              F.cross_entropy(logits, y, reduction="sum").astype("float64").reshape([]),
                              paddle.to_tensor(float(len(labels)), dtype="float64")])
    if world_size > 1:
        # One reduction at the end: ranks may run different numbers of batches.
        paddle.distributed.all_reduce(sums)
    sums = sums.numpy()
    images = int(round(sums[-1]))
    result = {f"top{k}": float(sums[i] / max(images, 1)) for i, k in enumerate(ks)}
    result.update(loss=float(sums[-2] / max(images, 1)), images=images)
    return result
