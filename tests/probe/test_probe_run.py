"""The linear probe end to end through the real CLI: train, eval.json, `simsiam-train eval`, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from helpers.prereqs import unavailable

from trainer import checkpoint as ckpt
from trainer.config import shipped_config
from trainer.data import fashion_mnist
from trainer.models import build_model

PRETRAIN = {"name": "simsiam_cifar_resnet18_pretrain", "width": 8, "dim": 32, "pred_dim": 8}
CONFIG = shipped_config("simsiam_cifar_resnet18_fmnist_lp_cpu.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not (fashion_mnist.source_dir() / "train-images-idx3-ubyte.gz").is_file():
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 64, 23, seed=2)


@pytest.fixture(scope="module")
def pretrain_checkpoint(tmp_path_factory):
    """A pretraining checkpoint as the pretrain loop writes it (format c), with random BN statistics."""
    paddle.seed(0)
    model = build_model(PRETRAIN)
    rng = np.random.default_rng(0)
    for name, tensor in model.state_dict().items():
        if name.endswith(("_mean", "_variance")):
            tensor.set_value(rng.uniform(0.5, 1.5, tensor.shape).astype("float32"))
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": 1, "step": 0, "global_step": 7,
             "rng": ckpt.rng_state(), "config": ""}
    path = ckpt.save_checkpoint(tmp_path_factory.mktemp("pretrain") / "checkpoints", state)
    return path, {k[len("encoder."):]: v.numpy() for k, v in model.state_dict().items()
                  if k.startswith("encoder.") and not k.startswith("encoder.fc.")}


def simsiam_train(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def overrides(data, out, *extra):
    items = [f"DataLoader.Train.dataset.root={data / 'train'}",
             f"DataLoader.Eval.dataset.root={data / 'val'}",
             "DataLoader.Train.sampler.batch_size=16", "DataLoader.Eval.sampler.batch_size=10",
             "Global.epochs=2", "Global.eval_interval=1", "Global.print_batch_step=2",
             f"Global.output_dir={out}", *extra]
    return [arg for item in items for arg in ("-o", item)]


@pytest.mark.slow
def test_probe_trains_from_a_checkpoint_and_evaluates_exactly(data, pretrain_checkpoint, tmp_path):
    path, encoder = pretrain_checkpoint
    out = tmp_path / "probe"
    run = simsiam_train("-c", str(CONFIG), *overrides(data, out, f"Global.pretrained_model={path}"),
                        cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "epoch 2/2  step 4/4" in run.stdout and "img/s" in run.stdout and "ETA" in run.stdout

    result = json.loads((out / "eval.json").read_text())
    assert result["last"]["epoch"] == 2 and result["best"]["epoch"] in (1, 2)
    assert result["last"]["images"] == 23
    assert result["best"]["top1"] >= result["last"]["top1"]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]

    # Frozen: the trained probe carries the pretrained encoder bit for bit, BN statistics included.
    probe = paddle.load(str(out / "probe.pdparams"))
    assert set(probe) == set(encoder) | {"fc.weight", "fc.bias"}
    for name, value in encoder.items():
        np.testing.assert_array_equal(probe[name].numpy(), value, err_msg=name)
    assert np.abs(probe["fc.bias"].numpy()).max() > 0  # the head did train

    # `simsiam-train eval` on the trained probe reproduces the last evaluation.
    again = simsiam_train("eval", "-c", str(CONFIG),
                          *overrides(data, tmp_path / "eval", f"Global.pretrained_model={out / 'probe'}"),
                          cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    alone = json.loads(again.stdout.strip().splitlines()[-1])
    assert alone["images"] == 23
    assert alone["top1"] == pytest.approx(result["last"]["top1"], abs=1e-9)
    assert alone["top5"] == pytest.approx(result["last"]["top5"], abs=1e-9)


def test_probe_refuses_weights_that_do_not_fit(data, tmp_path):
    paddle.save(paddle.vision.models.resnet18().state_dict(), str(tmp_path / "r18.pdparams"))
    run = simsiam_train("-c", str(CONFIG),
                        *overrides(data, tmp_path / "out", f"Global.pretrained_model={tmp_path / 'r18'}"),
                        cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("simsiam-train: error: Global.pretrained_model:")
    assert "shape mismatch: bn1._mean [64] vs model [8]" in lines[-1] and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "eval.json").exists()


def test_eval_without_weights_is_a_usage_error(data, tmp_path):
    run = simsiam_train("eval", "-c", str(CONFIG), *overrides(data, tmp_path / "out"), cwd=tmp_path)
    assert run.returncode == 2 and "needs the trained probe" in run.stderr


def test_checkpoint_format_loads_with_no_missing_keys(pretrain_checkpoint):
    """(c): this project's .pdckpt (model + optimizer + rng ...), read for its encoder part."""
    from trainer import weights

    path, encoder = pretrain_checkpoint
    probe = build_model({"name": "cifar_resnet18_linearprobe", "width": 8, "class_num": 10})
    loaded = weights.load_into(probe, path)
    assert sorted(loaded) == sorted(encoder)
    np.testing.assert_array_equal(probe.bn1._variance.numpy(), encoder["bn1._variance"])


@pytest.mark.slow
def test_sigterm_checkpoint_and_resume_match_an_uninterrupted_probe(data, pretrain_checkpoint, tmp_path):
    """Preemption mid-run (Kubernetes/Slurm send SIGTERM): exit 143 with a checkpoint; resuming ends
    with exactly the probe an uninterrupted run trains."""
    import signal

    path, _ = pretrain_checkpoint
    common = ("Global.epochs=3", "Global.print_batch_step=1", f"Global.pretrained_model={path}")
    full = simsiam_train("-c", str(CONFIG), *overrides(data, tmp_path / "full", *common), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "preempted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "-c", str(CONFIG),
                             *overrides(data, out, *common)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way, then preempt
        if "epoch 1/3  step 2/4" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    assert list((out / "checkpoints").glob("*.pdckpt"))

    resumed = simsiam_train("-c", str(CONFIG), *overrides(data, out, *common, "Global.auto_resume=True"),
                            cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = paddle.load(str(tmp_path / "full" / "probe.pdparams")), paddle.load(str(out / "probe.pdparams"))
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
    assert json.loads((out / "eval.json").read_text())["last"] == \
        json.loads((tmp_path / "full" / "eval.json").read_text())["last"]
