"""Exact evaluation: 2 real CPU processes on a validation set that does not split evenly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from helpers.prereqs import unavailable

from trainer.data import fashion_mnist
from trainer.models import build_model

HERE = Path(__file__).parent
N_VAL = 23  # 2 ranks x batch 4: shards of 11 and 12, each ending in a partial batch


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    if not (fashion_mnist.source_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 0, N_VAL, seed=1) / "val"


def reference_accuracy(root, model):
    """Top-1/top-5 computed directly: every image once, no loader, no distribution."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype="float32") / 255.0
            images.append(((pixels - 0.5) / 0.25).transpose(2, 0, 1))
            labels.append(label)
    model.eval()
    logits = model(paddle.to_tensor(np.stack(images))).numpy()
    order = np.argsort(-logits, axis=1)
    labels = np.array(labels)
    return {"top1": float(np.mean(order[:, 0] == labels)),
            "top5": float(np.mean((order[:, :5] == labels[:, None]).any(axis=1)))}


@pytest.mark.slow
def test_two_process_eval_counts_every_image_once(val_root, tmp_path):
    paddle.seed(0)
    model = build_model({"name": "pixels_linearprobe", "class_num": 10})
    # Random weights: top-1 strictly between 0 and 1, so a dropped or doubled image changes it.
    rng = np.random.default_rng(0)
    model.fc.weight.set_value(rng.normal(0, 0.02, model.fc.weight.shape).astype("float32"))
    paddle.save(model.state_dict(), str(tmp_path / "probe.pdparams"))
    expected = reference_accuracy(val_root, model)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent.parent)}
    args = [str(val_root), str(tmp_path / "probe.pdparams"), str(tmp_path / "result")]
    single = subprocess.run([sys.executable, str(HERE / "eval_worker.py"), *args[:2], str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
         "--log_dir", str(tmp_path / "log"), str(HERE / "eval_worker.py"), *args],
        env=env, capture_output=True, text=True, timeout=240)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert launch.returncode == 0, logs[-3000:]

    ranks = [json.loads((tmp_path / f"result.{r}").read_text()) for r in (0, 1)]
    one = json.loads((tmp_path / "one.0").read_text())
    assert sorted(r["rank_images"] for r in ranks) == [11, 12]
    for result in (*ranks, one):
        assert result["images"] == N_VAL
        assert result["top1"] == pytest.approx(expected["top1"], abs=1e-9)
        assert result["top5"] == pytest.approx(expected["top5"], abs=1e-9)
    assert ranks[0]["loss"] == pytest.approx(one["loss"], rel=1e-6)
    # A trivial classifier (all right or all wrong) could not tell counting errors apart.
    assert 0 < expected["top1"] < 1
