"""A cheap representation-quality curve for pretraining: kNN top-1 on a small labelled split.

As the official SimSiam CIFAR demo monitors its runs (the kNN monitor of the MoCo demo): backbone
features (the pooled output, before the projector), l2-normalised, each image classified by a vote
of its k most similar neighbours weighted by exp(similarity / temperature). The neighbours come from
the same held-out split, leaving the image itself out, so one labelled folder (DataLoader.Eval) is
all it needs: no training of a classifier, a few seconds per evaluation on a few hundred images.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

K, TEMPERATURE = 200, 0.1


@paddle.no_grad()
def backbone_features(encoder: nn.Layer, loader, amp) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of this rank's share of `loader`, features in float32."""
    was_training = encoder.training
    encoder.eval()
    projector, encoder.fc = encoder.fc, nn.Identity()    # the backbone's pooled features
    features, labels = [], []
    try:
        for views, batch_labels in loader:
            with amp.autocast():
                x = encoder(loader.to_tensor(views[0]))
            features.append(x.astype("float32").numpy())
            labels.append(np.asarray(batch_labels))
    finally:
        encoder.fc = projector
        if was_training:
            encoder.train()
    return (np.concatenate(features) if features else np.zeros((0, encoder.feature_dim), "float32"),
            np.concatenate(labels) if labels else np.zeros((0,), "int64"))


def knn_top1(features: np.ndarray, labels: np.ndarray, k: int = K, temperature: float = TEMPERATURE) -> float:
    """Leave-one-out weighted kNN top-1 over one labelled set."""
    n = len(labels)
    if n < 2:
        return 0.0
    x = F.normalize(paddle.to_tensor(features, dtype="float32"), axis=1)
    y = paddle.to_tensor(labels.astype("int64"))
    similarity = x @ x.T - 3.0 * paddle.eye(n)                 # cosines are >= -1: never its own neighbour
    top, index = paddle.topk(similarity, min(k, n - 1), axis=1)
    votes = F.one_hot(paddle.gather(y, index.flatten()).reshape(index.shape), int(labels.max()) + 1)
    scores = (votes * paddle.exp(top / temperature).unsqueeze(-1)).sum(axis=1)
    return float((scores.argmax(axis=1) == y).astype("float32").mean())


def evaluate_knn(encoder: nn.Layer, loader, amp, world_size: int) -> dict:
    """{"knn_top1", "images"} over the whole split (every rank's share gathered)."""
    features, labels = backbone_features(encoder, loader, amp)
    if world_size > 1:
        shares = []
        paddle.distributed.all_gather_object(shares, (features, labels))
        features = np.concatenate([f for f, _ in shares])
        labels = np.concatenate([y for _, y in shares])
    return {"knn_top1": knn_top1(features, labels), "images": int(len(labels))}
