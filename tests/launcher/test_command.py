"""The per-node launch command, run through paddle's real launcher (CPU wheel)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from helpers.paths import CPU_CONFIG

from simsiam_job.command import launch_args, trainer_args
from simsiam_job.spec import JobSpec, Phase

# Stands in for simsiam-train: records which GPU paddle's launcher gave each process.
WORKER = """import os, sys
rank = os.environ["PADDLE_LOCAL_RANK"]
open(os.path.join(sys.argv[1], "gpu." + rank), "w").write(os.environ.get("FLAGS_selected_gpus", ""))
"""


def gpu_spec(gpus: int) -> JobSpec:
    text = CPU_CONFIG.read_text()
    return JobSpec(name="cvd", phase=Phase.PRETRAIN, backend="local", nodes=1, gpus=gpus, image="",
                   config_source=str(CPU_CONFIG), config=yaml.safe_load(text), config_yaml=text)


def test_gpu_launch_works_when_cuda_visible_devices_lists_other_gpus(tmp_path):
    """Slurm's partial-node allocations (and shared machines) make, say, GPUs 5 and 7 visible;
    paddle must start one process per visible GPU, process i on the i-th of them. Paddle's
    launcher reads the visible list from the environment alone, so a CPU machine runs it too."""
    (tmp_path / "worker.py").write_text(WORKER)
    argv = launch_args(gpu_spec(2), master=None, nnodes=1, node_rank="0",
                       log_dir=str(tmp_path / "logs"), python=sys.executable)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "5,7"}
    proc = subprocess.run([*argv, str(tmp_path / "worker.py"), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Paddle's device index is relative to CUDA_VISIBLE_DEVICES: 0 is GPU 5, 1 is GPU 7.
    assert {p.name: p.read_text() for p in tmp_path.glob("gpu.*")} == {"gpu.0": "0", "gpu.1": "1"}


def test_a_pretrain_config_with_an_eval_split_reads_it_from_the_data_location():
    """The Fashion-MNIST pretrain config holds a labelled Eval split for its kNN monitor: `--data`
    must point it at DATA/val as it does for the linear probe, or the monitor reads the config's
    laptop path inside the job."""
    from simsiam_job.build import Request, build_spec
    from trainer.config import shipped_config

    config = str(shipped_config("simsiam_cifar_resnet18_fmnist_pt_cpu"))
    spec = build_spec(Request(phase="pretrain", backend="local", gpus=0, config=config, name="knn"))
    argv = trainer_args(spec, config_path="c.yaml", data_dir="/data/fmnist", output_dir="/out")
    assert 'DataLoader.Eval.dataset.root="/data/fmnist/val"' in argv
    spec = build_spec(Request(phase="pretrain", backend="local", gpus=0, config=str(CPU_CONFIG),
                              name="plain"))
    argv = trainer_args(spec, config_path="c.yaml", data_dir="/data/fmnist", output_dir="/out")
    assert not any(a.startswith("DataLoader.Eval") for a in argv)
