"""A real 2-process paddle.distributed.launch run on CPU (gloo collectives)."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from helpers.paths import REPO
from helpers.trainer import tiny_run_args

pytestmark = pytest.mark.slow


def test_two_process_fleet_run_ends_with_identical_parameters(tmp_path, image_root):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "logs"), str(REPO / "tests/trainer/fleet_worker.py"),
           *tiny_run_args(out, image_root, "-o", "DataLoader.Train.sampler.batch_size=2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK_STATE_DIR": str(tmp_path)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert result.returncode == 0, logs[-3000:]
    rank0, rank1 = (paddle.load(str(tmp_path / f"rank{r}.pdparams")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        np.testing.assert_array_equal(rank0[key].numpy(), rank1[key].numpy(), err_msg=key)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    # 16 images, 2 per rank per step, 2 ranks: 4 steps per epoch; throughput counts both ranks
    assert [s["global_step"] for s in steps] == list(range(1, 9))
    assert "2 process(es)" in (out / "train.log").read_text()
    initial = paddle.load(str(out / "checkpoints" / "epoch_001_step_00000004.pdckpt"))["model"]
    assert not np.array_equal(initial["encoder.conv1.weight"].numpy(), rank0["encoder.conv1.weight"].numpy())
