"""Every logged step tells a follower everything (trainer.contract.PROGRESS_FIELDS), in
metrics.jsonl and as a progress line on rank 0's stdout, for both tasks."""
import json

import pytest
from helpers.trainer import run_cli, tiny_run_args

from trainer import contract
from trainer.config import shipped_config

pytestmark = pytest.mark.slow

PROBE = ["-c", str(shipped_config("simsiam_cifar_resnet18_fmnist_lp_cpu")), "-o", "Model.width=4",
         "-o", "Model.class_num=2", "-o", "DataLoader.Train.sampler.batch_size=4", "-o", "Global.epochs=2",
         "-o", "Global.print_batch_step=1"]


@pytest.mark.parametrize("task", ["pretrain", "linear-probe"])
def test_step_records_carry_the_progress_fields_and_reach_stdout(tmp_path, image_root, task):
    out = tmp_path / "run"
    if task == "pretrain":
        args = tiny_run_args(out, image_root)
    else:
        args = [*PROBE, "-o", f"Global.output_dir={out}", "-o", f"DataLoader.Train.dataset.root={image_root}",
                "-o", f"DataLoader.Eval.dataset.root={image_root}"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / contract.METRICS).read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert len(steps) == 8                                      # 16 images / batch 4 x 2 epochs
    for record in steps:
        missing = [f for f in contract.PROGRESS_FIELDS if f not in record]
        assert not missing, (missing, record)
    first, last = steps[0], steps[-1]
    assert (first["epoch"], first["step"], first["global_step"]) == (1, 1, 1)
    assert (last["epoch"], last["epochs"], last["step"], last["steps_per_epoch"]) == (2, 2, 4, 4)
    assert last["global_step"] == last["total_steps"] == 8
    assert last["eta_seconds"] == 0 and all(r["eta_seconds"] >= 0 for r in steps)
    assert all(r["images_per_sec"] > 0 for r in steps)
    printed = [contract.parse_progress_line(line) for line in result.stdout.splitlines()]
    assert [r for r in printed if r is not None] == steps
