"""Never a silently wrong run: divergence stops with exit 3 and leaves the last good checkpoint as it
was; a checkpoint of another model shape is refused with exit 2 naming the tensor; junk named like a
checkpoint is reported, never counted, never deleted. Real runs of simsiam-train on CPU."""
import shutil

import pytest
from helpers.trainer import run_cli, tiny_run_args

from trainer import checkpoint as ckpt
from trainer import contract
from trainer.guard import Retention

GOOD = "epoch_001_step_00000004.pdckpt"       # 16 images, batch 4: one epoch is 4 steps


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, image_root):
    """A finished one-epoch run (its checkpoint and encoder), copied for each test."""
    out = tmp_path_factory.mktemp("first") / "out"
    result = run_cli(tiny_run_args(out, image_root, "-o", "Global.epochs=1"))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def run_dir(one_epoch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(one_epoch, out)
    return out


def _bytes(out):
    return {p.name: p.read_bytes() for p in [*(out / contract.CHECKPOINTS).iterdir(), out / contract.ENCODER]}


def _one_error_line(result, code):
    lines = [line for line in result.stderr.splitlines() if line.startswith("simsiam-train")]
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("simsiam-train: error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_resumed_run_that_diverges_stops_with_exit_3_and_keeps_the_good_checkpoint(run_dir, image_root):
    """A NaN learning rate is refused with the config (exit 2); a finite one can still blow up."""
    before = _bytes(run_dir)
    result = run_cli(tiny_run_args(run_dir, image_root, "-o", "Global.auto_resume=True",
                                   "-o", "Optimizer.lr.learning_rate=1.0e+30"))
    line = _one_error_line(result, contract.EXIT_DIVERGED)
    assert "training diverged at global step" in line, line
    assert _bytes(run_dir) == before                           # no checkpoint after it, no NaN encoder


def test_a_huge_learning_rate_stops_with_exit_3_before_any_checkpoint(tmp_path, image_root):
    out = tmp_path / "out"
    result = run_cli(tiny_run_args(out, image_root, "-o", "Optimizer.lr.learning_rate=1.0e+30",
                                   "-o", "Global.print_batch_step=100"))
    line = _one_error_line(result, contract.EXIT_DIVERGED)
    assert "training diverged at global step" in line
    assert ckpt.list_checkpoints(out / contract.CHECKPOINTS) == [] and not (out / contract.ENCODER).exists()


@pytest.mark.parametrize("epochs", [1, 2], ids=["epochs-done", "epochs-left"])
def test_a_checkpoint_of_another_shape_is_refused_naming_the_tensor(run_dir, image_root, epochs):
    result = run_cli(tiny_run_args(run_dir, image_root, "-o", "Global.auto_resume=True",
                                   "-o", "Model.width=8", "-o", f"Global.epochs={epochs}"))
    line = _one_error_line(result, contract.EXIT_BAD_INPUT)
    assert GOOD in line and "encoder.conv1.weight has shape [4, 3, 3, 3] in the checkpoint and " \
        "[8, 3, 3, 3] in the model" in line, line
    assert "Skip loading" not in result.stdout + result.stderr      # none of paddle's warnings


def test_junk_named_like_a_checkpoint_is_reported_and_not_counted(run_dir, image_root):
    junk = run_dir / contract.CHECKPOINTS / "epoch_999_step_99999999.pdckpt"
    junk.write_text("not a checkpoint")
    result = run_cli(tiny_run_args(run_dir, image_root, "-o", "Global.max_num_latest_checkpoint=1",
                                   "-o", "Global.auto_resume=True", "-o", "Global.epochs=3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert junk.read_text() == "not a checkpoint"                   # never deleted: it may not be ours
    valid = [p.name for p in ckpt.list_checkpoints(run_dir / contract.CHECKPOINTS) if p != junk]
    assert valid == ["epoch_003_step_00000012.pdckpt"]              # the newest valid one is kept
    log = (run_dir / contract.TRAIN_LOG).read_text()
    assert f"{junk} is unreadable" in log and "not counted in Global.max_num_latest_checkpoint" in log


def test_retention_keeps_the_newest_valid_checkpoints(tmp_path):
    retention = Retention(tmp_path, keep=2)
    for step in (2, 4, 6):
        retention.written(ckpt.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "epoch": 0,
                                                          "step": step, "global_step": step}))
        retention.apply()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "epoch_000_step_00000004.pdckpt", "epoch_000_step_00000006.pdckpt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
