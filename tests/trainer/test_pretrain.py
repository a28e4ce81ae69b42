"""End-to-end pretraining runs on CPU with real paddle: the output contract, resume, preemption."""
import json
import signal
import subprocess
import sys
import time
from xml.etree import ElementTree

import numpy as np
import paddle
import pytest
import yaml
from helpers.paths import REPO
from helpers.trainer import run_cli, tiny_run_args, write_pngs
from paddle.vision.models import resnet18

from trainer import checkpoint as ckpt

pytestmark = pytest.mark.slow


def test_tiny_run_writes_the_output_contract(tmp_path, image_root):
    out = tmp_path / "run"
    result = run_cli(tiny_run_args(out, image_root))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "curves.svg",
                                                     "encoder.pdparams", "metrics.jsonl", "train.log"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["Global"]["output_dir"] == str(out) and config["Model"]["width"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["global_step"] for r in steps] == list(range(1, 9))     # 16 images / batch 4, 2 epochs
    for field in ("epoch", "step", "global_step", "loss", "lr", "lr_predictor", "images_per_sec",
                  "z_std", "time"):
        assert all(field in r for r in steps), field
    # cosine, 2 epochs
    assert steps[0]["lr"] == pytest.approx(0.06) and steps[-1]["lr"] == pytest.approx(0.03)
    assert {r["lr_predictor"] for r in steps} == {0.06}
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == [
        "epoch_001_step_00000004.pdckpt", "epoch_002_step_00000008.pdckpt"][-2:]
    log_text = (out / "train.log").read_text()
    assert "epoch 2/2  step 4/4  loss" in log_text and "img/s" in log_text and "ETA" in log_text
    assert "epoch 2/2  step 4/4" in result.stdout                # the progress line reaches the console
    curves = ElementTree.parse(out / "curves.svg").getroot()    # the plot covers every logged step
    lines = curves.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 3 and all(len(line.get("points").split()) == 8 for line in lines)  # loss, z_std, lr


def test_exported_encoder_loads_into_a_paddle_vision_model(tmp_path, image_root):
    out = tmp_path / "run"
    assert run_cli(tiny_run_args(out, image_root, "-o", "Model.name=simsiam_resnet18_pretrain",
                                 "-o", "Global.epochs=1")).returncode == 0
    weights = paddle.load(str(out / "encoder.pdparams"))
    assert not any(k.startswith("fc.") for k in weights)
    model = resnet18()
    missing, unexpected = model.set_state_dict(weights)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    last = ckpt.load_checkpoint(ckpt.list_checkpoints(out / "checkpoints")[-1])
    np.testing.assert_array_equal(weights["layer1.0.conv1.weight"].numpy(),
                                  last["model"]["encoder.layer1.0.conv1.weight"].numpy())


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _wait_for_checkpoint(directory, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ckpt.list_checkpoints(directory):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def _final_state(out):
    return ckpt.load_checkpoint(ckpt.list_checkpoints(out / "checkpoints")[-1])


@pytest.fixture(scope="module")
def long_args(tmp_path_factory):
    """Long enough (12 epochs x 4 steps) that a kill after the first checkpoint lands mid-run."""
    root = write_pngs(tmp_path_factory.mktemp("resume") / "train", per_class=8, size=(32, 32))
    return lambda out, *extra: tiny_run_args(out, root, "-o", "Global.epochs=12",
                                             "-o", "Global.save_interval_steps=2", *extra)


def test_sigkill_then_auto_resume_equals_an_uninterrupted_run(tmp_path, long_args):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _start(long_args(killed))
    _wait_for_checkpoint(killed / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "epoch_012_step_00000048.pdckpt").exists()   # really mid-run
    resumed = run_cli(long_args(killed, "-o", "Global.auto_resume=True"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert run_cli(long_args(straight)).returncode == 0
    a, b = _final_state(straight), _final_state(killed)
    assert a["global_step"] == b["global_step"] == 48
    for key, value in a["model"].items():
        np.testing.assert_array_equal(value.numpy(), b["model"][key].numpy(), err_msg=key)
    # the optimizer state carried over too (momentum buffers)
    assert a["optimizer"].keys() == b["optimizer"].keys()


def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path, long_args):
    out = tmp_path / "run"
    proc = _start(long_args(out, "-o", "Global.save_interval_steps=0"))
    _wait_for_checkpoint(out / "checkpoints", proc)          # the first epoch's checkpoint
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Global.auto_resume=True" in stderr
    assert "Traceback" not in stderr
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1]
    state = ckpt.load_checkpoint(newest)
    assert 4 <= state["global_step"] < 48 and newest.name.endswith(f"{state['global_step']:08d}.pdckpt")


def test_auto_resume_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    base = {"model": {}, "optimizer": {}, "step": 0}
    ckpt.save_checkpoint(directory, {**base, "epoch": 1, "global_step": 4})
    newest = ckpt.save_checkpoint(directory, {**base, "epoch": 2, "global_step": 8})
    newest.write_bytes(newest.read_bytes()[:20])               # a preempted write, truncated
    path, state = ckpt.latest_valid_checkpoint(directory)
    assert path.name == "epoch_001_step_00000004.pdckpt" and state["global_step"] == 4
    assert "skipping checkpoint" in caplog.text and newest.name in caplog.text


def test_passl_schema_resnet50_config_runs_one_step_on_cpu(tmp_path):
    root = write_pngs(tmp_path / "train", classes=("n01440764", "n01443537"), per_class=1, size=(64, 48))
    result = run_cli(["-c", str(REPO / "trainer/configs/simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml"),
                      "-o", "Global.device=cpu", "-o", "DataLoader.Train.sampler.batch_size=2",
                      "-o", f"DataLoader.Train.dataset.root={root}", "-o", "Global.epochs=1",
                      "-o", f"Global.output_dir={tmp_path / 'out'}"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1  step 1/1  loss" in result.stdout
    weights = paddle.load(str(tmp_path / "out" / "encoder.pdparams"))
    assert weights["layer4.2.bn3.weight"].shape == [2048]
