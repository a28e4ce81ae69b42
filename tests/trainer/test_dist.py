"""The process group as the trainer builds it (real dist.init, 2 processes, gloo): the device
string, SyncBatchNorm on GPUs, the CPU thread split, one resume checkpoint for all ranks."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from helpers.paths import REPO
from helpers.trainer import run_cli, tiny_run_args

from trainer import checkpoint as ckpt
from trainer.models import build_model

pytestmark = pytest.mark.slow


def launch(tmp_path, worker, args, env=None, timeout=240):
    """`python -m paddle.distributed.launch --nproc_per_node 2 WORKER ARGS`; returns the workers' logs."""
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           str(REPO / "tests/trainer" / worker), *args]
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    text = "\n".join(p.read_text() for p in sorted(logs.glob("workerlog.*")))
    assert result.returncode == 0, text[-3000:] + result.stderr[-2000:]
    return text


def test_on_gpus_the_pretraining_set_up_synchronizes_batch_norm(tmp_path, image_root):
    """See setup_worker.py: the GPU is pretended at paddle's device boundary only."""
    launch(tmp_path, "setup_worker.py",
           tiny_run_args(tmp_path / "out", image_root, "-o", "Global.device=gpu"),
           env={"RESULT_DIR": str(tmp_path)})
    plain = list(build_model({"name": "simsiam_cifar_resnet18_pretrain", "width": 4, "dim": 16,
                              "pred_dim": 8}).state_dict())
    for rank in (0, 1):
        built = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert built["device"] == f"gpu:{rank}" and built["threads"] is None
        assert built["norms"] == ["SyncBatchNorm"]
        assert built["state_names"] == plain                      # checkpoints keep their names


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, image_root):
    """A 2-epoch single-process run's checkpoints: after epoch 1 (step 4) and epoch 2 (step 8)."""
    out = tmp_path_factory.mktemp("first") / "run"
    result = run_cli(tiny_run_args(out, image_root))
    assert result.returncode == 0, result.stderr
    return ckpt.list_checkpoints(out / "checkpoints")


def test_ranks_resume_from_rank_0s_checkpoint_and_split_the_cpu(tmp_path, image_root, checkpoints):
    """Each rank has its own output directory (as pods with their own volume would): rank 0's holds
    the step-8 checkpoint, rank 1's the step-4 one. Both must continue from rank 0's choice."""
    after_epoch_1, after_epoch_2 = checkpoints
    base = tmp_path / "out"
    for rank, chosen in ((0, after_epoch_2), (1, after_epoch_1)):
        (base / f"rank{rank}" / "checkpoints").mkdir(parents=True)
        shutil.copy(chosen, base / f"rank{rank}" / "checkpoints")
    args = tiny_run_args("unused", image_root, "-o", "DataLoader.Train.sampler.batch_size=2",
                         "-o", "Global.epochs=3", "-o", "Global.auto_resume=True")
    logs = launch(tmp_path, "fleet_worker.py", args, env={"RANK_STATE_DIR": str(tmp_path),
                                                          "RANK_OUTPUT_DIR": str(base)})
    rank0, rank1 = (paddle.load(str(tmp_path / f"rank{r}.pdparams")) for r in (0, 1))
    for key in rank0:
        np.testing.assert_array_equal(rank0[key].numpy(), rank1[key].numpy(), err_msg=key)
    steps = [json.loads(line)["global_step"]
             for line in (base / "rank0" / "metrics.jsonl").read_text().splitlines()
             if '"type": "step"' in line]
    assert steps == [9, 10, 11, 12]
    assert f"resumed from {base / 'rank0' / 'checkpoints' / after_epoch_2.name}" in logs
    cores = len(os.sched_getaffinity(0))
    assert (f"2 process(es) on cpu ({max(1, cores // 2)} threads)"
            in (base / "rank0" / "train.log").read_text())


def test_a_bad_resume_checkpoint_stops_every_rank_with_one_line(tmp_path, image_root):
    """Rank 0 decides; the others must stop with its reason rather than wait for it forever."""
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           str(Path(sys.executable).parent / "simsiam-train"),
           *tiny_run_args(tmp_path / "out", image_root, "-o", "DataLoader.Train.sampler.batch_size=2",
                          "-o", f"Global.checkpoint={tmp_path / 'missing.pdckpt'}")]
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode != 0
    for rank in (0, 1):
        text = (logs / f"workerlog.{rank}").read_text()
        assert ("simsiam-train: error: Global.checkpoint: checkpoint" in text
                and "does not exist" in text), text[-2000:]
        assert "Traceback" not in text
