"""The pretraining's kNN monitor: leave-one-out kNN top-1 on DataLoader.Eval, as eval records."""
import json

import numpy as np
import pytest
from helpers.trainer import run_cli, tiny_run_args

from trainer import contract
from trainer.engine.knn import knn_top1


def test_knn_top1_separates_clustered_from_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    labels = np.repeat(np.arange(4), 50)
    features = centres[labels] + 0.3 * rng.normal(size=(200, 32))
    assert knn_top1(features, labels, k=20) == 1.0
    shuffled = rng.permutation(labels)
    assert knn_top1(features, shuffled, k=20) < 0.45           # chance is 0.25
    # the image itself is no neighbour: two identical images of different classes mislead each other
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert knn_top1(features, np.array([0, 1, 1, 1]), k=1) == 0.5


@pytest.mark.slow
def test_pretraining_records_knn_top1_on_the_eval_split(tmp_path, image_root):
    out = tmp_path / "run"
    result = run_cli(tiny_run_args(out, image_root, "-o", "DataLoader.Eval.dataset.name=ImageFolder",
                                   "-o", f"DataLoader.Eval.dataset.root={image_root}",
                                   "-o", "DataLoader.Eval.dataset.transform=[ToTensor]",
                                   "-o", "DataLoader.Eval.sampler.batch_size=8",
                                   "-o", "Global.eval_during_train=True"))
    assert result.returncode == 0, result.stderr
    evals = [r for r in map(json.loads, (out / contract.METRICS).read_text().splitlines())
             if r["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all(e["images"] == 16 and 0 <= e["knn_top1"] <= 1 for e in evals)
    assert "kNN monitor epoch 2: top-1" in result.stdout
