"""`simsiam-job submit smoke`: the check an operator runs on a new cluster, run for real on CPU
(paddle, gloo, two processes; two Slurm nodes), driven only through the CLI. Nothing is mocked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli

from trainer.config import load_config, shipped_config
from trainer.contract import SMOKE

pytestmark = pytest.mark.slow


def smoke(env, name, out_root, *args, timeout=300):
    """`simsiam-job submit smoke --gpus 0 ... --wait`: (the finished process, the job reference,
    the job's OUTPUT_DIR/smoke.json)."""
    proc = run_cli(["submit", "smoke", "--gpus", "0", "--name", name, "--output", out_root, "--wait", *args],
                   env, timeout=timeout)
    ref = proc.stdout.strip().splitlines()[0]
    report = json.loads((Path(out_root) / name / SMOKE).read_text())
    return proc, ref, report


def assert_sane_rank_figures(rank: dict) -> None:
    assert rank["images_per_sec"] > 0
    assert rank["allreduce_bytes"] > 1e6 and rank["bus_bandwidth_mbps"] > 0
    assert rank["amp_level"] == "O0" and rank["compute_dtype"] == "float32"
    assert rank["bn_synchronized"] is False          # paddle has no SyncBatchNorm on CPUs
    assert rank["loss_finite"] and math.isfinite(rank["loss_last"])
    assert rank["loss_last"] < rank["loss_first"]    # one fixed batch: a working step must lower it
    assert rank["peak_memory_mb"] > 10 and rank["peak_memory_kind"] == "rss"


def test_two_processes_pass_and_report_every_figure_per_rank_and_in_total(user_env, tmp_path):
    proc, ref, report = smoke(user_env, "smoke-ok", tmp_path / "out", "--procs", "2")

    assert proc.returncode == 0, proc.stderr
    assert report["verdict"] == "PASS" and report["reason"] is None
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for rank in report["ranks"]:
        assert_sane_rank_figures(rank)
    total = report["total"]
    assert total["ranks"] == 2 and total["nodes"] == 1
    assert total["images_per_sec"] == pytest.approx(sum(r["images_per_sec"] for r in report["ranks"]),
                                                    abs=0.02)
    assert total["bus_bandwidth_mbps"] == min(r["bus_bandwidth_mbps"] for r in report["ranks"])
    # The shipped CPU smoke config, chosen because --gpus 0, with its small model.
    assert report["model"] == "simsiam_cifar_resnet18_pretrain" and report["image_size"] == 32

    # --wait ends with the summary line; status shows it; the log holds the table.
    assert "smoke PASS: 2 rank(s) on 1 node(s)" in proc.stderr.strip().splitlines()[-2]
    assert "bus bandwidth at" in report["summary"]
    assert report["summary"] in run_cli(["status", ref], user_env, check=True).stdout
    log = run_cli(["logs", ref], user_env, check=True).stdout.splitlines()
    header = next(i for i, line in enumerate(log) if line.startswith("rank ") and "bus MB/s" in line)
    assert [line.split()[0] for line in log[header + 1:header + 4]] == ["0", "1", "total"]
    assert log[header + 4] == report["summary"]


def test_a_diverging_learning_rate_fails_with_the_reason_and_a_nonzero_exit(user_env, tmp_path):
    """A user's typo in the lr (1e30 instead of 1e-3): the loss turns NaN, the smoke says so."""
    proc, ref, report = smoke(user_env, "smoke-nan", tmp_path / "out", "--procs", "2",
                              "-o", "Optimizer.lr.learning_rate=1.0e+30", "-o", "Global.max_train_step=4")

    assert proc.returncode == 1
    assert report["verdict"] == "FAIL" and report["reason"].startswith("loss is not finite")
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{ref} FAILED") and "smoke FAIL: loss is not finite" in last
    assert all(not r["loss_finite"] for r in report["ranks"])


def test_the_shipped_smoke_configs_are_the_recipe_on_gpus_and_a_small_model_on_cpus(user_env, tmp_path):
    def rendered_config(*flags):
        out = tmp_path / "_".join(flags)
        run_cli(["render", "smoke", *flags, "--out", out], user_env, check=True)
        return yaml.safe_load((out / "config.yaml").read_text())

    gpu = rendered_config("--backend", "slurm", "--gpus", "8", "--nodes", "2")
    recipe = load_config(shipped_config("simsiam_resnet50_pt_in1k_1n8c_dp_fp32"))
    assert gpu["Global"]["task_type"] == "Smoke" and gpu["Global"]["max_train_step"] == 50
    for section in ("Model", "Optimizer", "FP16"):
        assert gpu[section] == recipe[section], section
    train, recipe_train = gpu["DataLoader"]["Train"], recipe["DataLoader"]["Train"]
    assert train["sampler"]["batch_size"] == recipe_train["sampler"]["batch_size"]
    crop = train["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform1"][0]
    assert crop == recipe_train["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform1"][0]
    cpu = rendered_config("--gpus", "0")
    assert cpu["Global"]["task_type"] == "Smoke" and cpu["Model"]["name"] == "simsiam_cifar_resnet18_pretrain"


@pytest.mark.slurm
def test_two_slurm_nodes_pass_and_report_each_node(slurm_env):
    env, root = slurm_env
    proc, ref, report = smoke(env, "smoke-two-nodes", root / "out", "--nodes", "2", timeout=600)

    assert proc.returncode == 0, proc.stderr
    assert ref.startswith("slurm://")
    assert report["verdict"] == "PASS"
    assert [(r["rank"], r["host"]) for r in report["ranks"]] == [(0, "node1"), (1, "node2")]
    for rank in report["ranks"]:
        assert_sane_rank_figures(rank)
    assert report["total"]["nodes"] == 2
    assert "smoke PASS: 2 rank(s) on 2 node(s)" in proc.stderr


def test_amp_that_does_not_take_effect_fails_instead_of_passing_silently(tmp_path):
    """FP16 O1 (float16) on a CPU: paddle's CPU build runs the convolutions in float32 anyway (it
    only warns), so a config meant for GPUs would train without AMP unnoticed; the smoke says so."""
    out = tmp_path / "amp"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "-c", str(shipped_config("simsiam_smoke_cpu")),
         "-o", f"Global.output_dir={out}", "-o", "FP16.level=O1", "-o", "Global.max_train_step=3"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert proc.returncode == 1
    reason = "FP16.level O1 is set but convolutions ran in float32 (AMP not in effect)"
    assert f"simsiam-train: error: smoke FAIL: {reason}" in proc.stderr
    report = json.loads((out / SMOKE).read_text())
    assert report["reason"] == reason and report["ranks"][0]["compute_dtype"] == "float32"


def test_a_kubernetes_smoke_job_is_labelled_with_its_phase_and_runs_the_smoke_task(user_env):
    proc = run_cli(["render", "smoke", "--backend", "kubernetes", "--nodes", "2", "--gpus", "8",
                    "--name", "smk"], user_env, check=True)
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert {o["metadata"]["labels"]["simsiam-job/phase"] for o in objects} == {"smoke"}
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    assert yaml.safe_load(config)["Global"]["task_type"] == "Smoke"
