"""The local backend end to end: real `simsiam-train` runs (paddle, CPU, 2 processes with gloo) on a
tiny Fashion-MNIST folder, driven only through the `simsiam-job` CLI. Nothing is mocked."""

import json
import os
import signal
from pathlib import Path

import pytest
from helpers.cli import assert_one_line_error, run_cli, wait_for
from helpers.cli import job_status as status
from helpers.paths import CPU_CONFIG, REPO

pytestmark = pytest.mark.slow

PROBE_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_fmnist_lp_cpu.yaml"
TINY = ["-o", "Model.width=4", "-o", "Model.dim=16", "-o", "Model.pred_dim=8",
        "-o", "DataLoader.Train.sampler.batch_size=8", "-o", "Global.print_batch_step=1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory, fmnist):
    """One user (HOME, XDG dirs) and the shared tiny data set for the whole module."""
    root = tmp_path_factory.mktemp("local-e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(HOME=str(root / "home"), XDG_DATA_HOME=str(root / "data"),
               XDG_CONFIG_HOME=str(root / "config"), OMP_NUM_THREADS="1")
    (root / "home").mkdir()
    return env, fmnist


def submit(env, data, *args, timeout=60):
    proc = run_cli(["submit", *args, "--data", data], env, check=True, timeout=timeout)
    return proc.stdout.strip().splitlines()[0], proc


@pytest.fixture(scope="module")
def pretrain(home):
    """A finished 2-process pretrain, with the states it went through."""
    env, data = home
    ref, proc = submit(env, data, "pretrain", "-c", CPU_CONFIG, "--procs", "2", "--name", "pt",
                       *TINY, "-o", "Global.epochs=2")
    assert ref == "local://pt"
    assert f"simsiam-job logs -f {ref}" in proc.stderr
    st, seen = wait_for(ref, env, lambda s: s["state"] not in ("PENDING", "RUNNING"))
    return ref, st, seen


def test_pretrain_runs_detached_to_success_and_exports_the_encoder(home, pretrain):
    ref, st, seen = pretrain
    assert "RUNNING" in seen and seen[-1] == "SUCCEEDED", seen
    output = Path(st["detail"]["output_dir"])
    assert (output / "encoder.pdparams").stat().st_size > 0
    assert st["detail"]["exit_code"] == 0
    assert st["progress"]["epoch"] == 2


def test_logs_per_rank_all_and_tail(home, pretrain):
    env, _ = home
    ref = pretrain[0]
    rank0 = run_cli(["logs", ref], env, check=True).stdout
    assert "epoch 2/2" in rank0  # the trainer's progress line, logged by rank 0
    assert run_cli(["logs", ref, "--rank", "1"], env, check=True).stdout != rank0
    both = run_cli(["logs", ref, "--all"], env, check=True).stdout.splitlines()
    assert {line.split("]")[0] + "]" for line in both} == {"[rank 0]", "[rank 1]"}
    assert len(run_cli(["logs", ref, "--tail", "2"], env, check=True).stdout.splitlines()) == 2
    followed = run_cli(["logs", "-f", ref], env, check=True, timeout=30).stdout
    assert followed == rank0  # -f on a finished job prints everything and returns
    assert_one_line_error(run_cli(["logs", ref, "--rank", "2"], env), 2, "has 2 rank(s)")


def test_list_shows_the_run_with_state_and_age(home, pretrain):
    env, _ = home
    rows = run_cli(["list"], env, check=True).stdout.splitlines()
    assert rows[0].split() == ["JOBREF", "PHASE", "STATE", "ATTEMPT", "AGE"]
    assert any(r.split()[:4] == [pretrain[0], "pretrain", "SUCCEEDED", "1"] for r in rows[1:])


def test_linear_probe_from_the_pretrain_job_uses_its_encoder(home, pretrain):
    env, data = home
    ref, proc = submit(env, data, "linear-probe", "-c", PROBE_CONFIG, "--from", pretrain[0], "--procs", "2",
                       "--name", "lp", "-o", "Model.width=4", "-o", "Global.epochs=1",
                       "-o", "Global.eval_interval=1", "-o", "DataLoader.Train.sampler.batch_size=8",
                       "-o", "Global.print_batch_step=1", "--wait", timeout=240)
    assert "SUCCEEDED" in proc.stderr and "epoch 1/1" in proc.stderr  # the --wait progress line
    output = Path(status(ref, env)["detail"]["output_dir"])
    result = json.loads((output / "eval.json").read_text())
    pretrain_output = Path(pretrain[1]["detail"]["output_dir"])
    assert result["pretrained_model"] == str(pretrain_output / "encoder.pdparams")
    assert 0.0 <= result["best"]["top1"] <= 1.0


def test_cancel_mid_run_checkpoints_and_reports_cancelled(home):
    env, data = home
    ref, _ = submit(env, data, "pretrain", "-c", CPU_CONFIG, "--procs", "2", "--name", "long",
                    *TINY, "-o", "Global.epochs=500")
    wait_for(ref, env, lambda s: (s["progress"] or {}).get("global_step", 0) >= 2)
    proc = run_cli(["cancel", ref], env, check=True, timeout=120)
    assert "cancelled" in proc.stdout
    st = status(ref, env)
    assert st["state"] == "CANCELLED"
    checkpoints = list(Path(st["detail"]["output_dir"], "checkpoints").iterdir())
    assert checkpoints, "SIGTERM must leave a checkpoint"
    assert _run_processes(st) == []
    assert "already finished" in run_cli(["cancel", ref], env, check=True).stdout


def test_a_vanished_run_is_reported_not_guessed(home):
    env, data = home
    ref, _ = submit(env, data, "pretrain", "-c", CPU_CONFIG, "--name", "gone", *TINY,
                    "-o", "Global.epochs=500")
    st, _ = wait_for(ref, env, lambda s: s["state"] == "RUNNING")
    for pid in _run_processes(st) + [int(Path(st["detail"]["run_dir"], "pid").read_text())]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    st, _ = wait_for(ref, env, lambda s: s["state"] != "RUNNING", timeout=30)
    assert st["state"] == "FAILED" and "was killed" in st["reason"] and "resume" in st["reason"]


def test_a_trainer_error_fails_the_job_with_its_message(home, tmp_path):
    env, _ = home
    empty = tmp_path / "empty"
    (empty / "train" / "shirt").mkdir(parents=True)     # a class folder without images: the trainer's to find
    ref, _ = submit(env, empty, "pretrain", "-c", CPU_CONFIG, "--name", "bad-data", *TINY)
    st, _ = wait_for(ref, env, lambda s: s["state"] not in ("PENDING", "RUNNING"))
    assert st["state"] == "FAILED" and st["detail"]["exit_code"] != 0
    assert str(empty / "train") in st["reason"]


def _run_processes(st):
    """The run's live processes, found as a user would: by the marker in their environment."""
    marker = f"SIMSIAM_JOB_RUN_DIR={st['detail']['run_dir']}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_quickstart_pretrains_probes_three_encoders_and_prints_the_table(home, tmp_path):
    """The README's main command, shrunk (200 images, 1 epoch) to fit the test budget."""
    env, _ = home
    proc = run_cli(["quickstart", "--workdir", tmp_path / "qs", "--train", "200", "--val", "100",
                    "-o", "Global.epochs=1", "-o", "Global.eval_interval=1",
                    "-o", "DataLoader.Train.sampler.batch_size=32"], env, timeout=400, check=True)
    table = proc.stdout.splitlines()
    assert table[-5].startswith("Linear probe on Fashion-MNIST (200 train / 100 val images)")
    rows = {line.split("  ")[1].strip(): line for line in table[-4:-1]}
    curves = Path(table[-1].split(": ", 1)[1])
    assert table[-1].startswith("Training curves") and curves.name == "curves.svg" and curves.is_file()
    assert set(rows) == {"SimSiam encoder (pretrained)", "random-init encoder",
                         "raw pixels (logistic regression)"}
    for line in rows.values():
        assert 0.0 <= float(line.split("%")[0].split()[-1]) <= 100.0
    assert "epoch 1/1" in proc.stderr  # progress was shown
    listed = run_cli(["list"], env, check=True).stdout
    assert listed.count("SUCCEEDED") >= 4
