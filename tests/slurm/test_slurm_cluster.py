"""End to end on a real two-node Slurm cluster: the real trainer, paddle's launcher on both nodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from helpers.cli import TINY, assert_one_line_error, run_cli, wait_for
from helpers.cli import job_status as status
from helpers.paths import BIN, REPO
from helpers.slurm import scontrol

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HOSTILE = "it's a $(touch pwned) `x` \"dir\" ; &"


def submit(env, name, *flags, nodes=2):
    proc = run_cli(["submit", "pretrain", "--nodes", nodes, "--gpus", "0", "--name", name, *TINY, *flags],
                   env, check=True)
    ref = proc.stdout.strip()
    assert ref.startswith("slurm://"), proc.stdout
    return ref


def overlay_venv(tmp_path, name, scripts: dict[str, str]):
    """A Python environment for the nodes: this venv, plus ``scripts`` (name -> text) first on PATH."""
    venv = tmp_path / name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f"source {sys.prefix}/bin/activate\n"
                                           f"export PATH={venv}/bin:$PATH\n")
    for script, text in scripts.items():
        (venv / "bin" / script).write_text(text)
        (venv / "bin" / script).chmod(0o755)
    return venv


def rank0_log(ref, env):
    return run_cli(["logs", "--rank", "0", ref], env, check=True).stdout


def test_two_node_pretrain_succeeds_on_both_nodes_and_feeds_a_probe(tmp_path, user_env, fmnist):
    import paddle

    # Data and output under names a shell would mangle: the trainer must get them verbatim.
    data = tmp_path / f"data {HOSTILE}"
    data.symlink_to(fmnist)
    out_root = tmp_path / f"out {HOSTILE}"
    states = tmp_path / "rank-states"
    states.mkdir()
    venv = overlay_venv(tmp_path, "venv", {"simsiam-train": (
        f"#!/bin/sh\nexec {sys.executable} {REPO}/tests/slurm/rank_state_train.py \"$@\"\n")})
    env = {**user_env, "SIMSIAM_JOB_SLURM_VENV": str(venv)}

    # Both nodes busy until the job has been seen waiting.
    go = tmp_path / "go"
    subprocess.run(["sbatch", "-N2", "--exclusive", "-o", "/dev/null", "--wrap",
                    f"timeout 120 sh -c 'until [ -e {go} ]; do sleep 0.2; done'"],
                   env=env, check=True, capture_output=True)
    ref = submit(env, "two-nodes", "--data", data, "--output", out_root, "-o", "Global.epochs=2",
                 "--env", f"RANK_STATE_DIR={states}")
    first, _ = wait_for(ref, env, lambda st: st["reason"] in ("Resources", "Priority"),
                        what="waiting for the busy nodes", timeout=30)
    assert first["state"] == "PENDING", first
    go.touch()
    follow = subprocess.Popen([str(BIN / "simsiam-job"), "logs", "-f", "--all", ref], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    final, seen = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED")
    assert ("RUNNING" in seen and seen[-1] == "SUCCEEDED"
            and "PENDING" not in seen[seen.index("RUNNING"):]), seen
    assert [(n["rank"], n["host"]) for n in final["nodes"]] == [(0, "node1"), (1, "node2")]

    # Each rank logged from its own node, into a file named by rank and node.
    job_dir = tmp_path / "jobs" / "two-nodes"
    assert sorted(p.name for p in (job_dir / "logs").glob("rank*.log")) == [
        "rank0-node1.log", "rank1-node2.log"]
    rank1 = run_cli(["logs", "--rank", "1", ref], env, check=True).stdout
    assert "simsiam-job: rank 1 on node2" in rank1 and "rank 0 on" not in rank1
    rank0 = rank0_log(ref, env)
    assert "simsiam-job: rank 0 on node1" in rank0 and "epoch 2/2  step 4/4" in rank0
    followed, _ = follow.communicate(timeout=60)      # -f ends by itself once the job has ended
    assert follow.returncode == 0
    assert ("[rank 0] simsiam-job: rank 0 on node1" in followed
            and "[rank 1] simsiam-job: rank 1 on node2" in followed)

    # The trainer got the paths verbatim, trained as one 2-process job and exported the encoder.
    out = out_root / "two-nodes"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["DataLoader"]["Train"]["dataset"]["root"] == f"{data}/train"
    assert config["Global"]["output_dir"] == str(out)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    assert [s["global_step"] for s in steps] == list(range(1, 9))   # 64 images, 8 per rank, 2 ranks, 2 epochs
    assert (out / "encoder.pdparams").is_file()
    assert not list(tmp_path.rglob("pwned"))
    rank_states = [paddle.load(str(states / f"rank{r}.pdparams")) for r in (0, 1)]
    assert rank_states[0].keys() == rank_states[1].keys()
    for key in rank_states[0]:
        np.testing.assert_array_equal(rank_states[0][key].numpy(), rank_states[1][key].numpy(), err_msg=key)
    assert run_cli(["status", ref], env, check=True).stdout.startswith(f"{ref}  SUCCEEDED")

    # The linear probe finds the encoder through the pretrain job's reference.
    probe = run_cli(["submit", "linear-probe", "--from", ref, "--nodes", "2", "--gpus", "0",
                     "--name", "probe",
                     "-c", REPO / "trainer/configs/simsiam_cifar_resnet18_fmnist_lp_cpu.yaml",
                     "-o", "Model.width=4", "-o", "Global.epochs=1",
                     "-o", "DataLoader.Train.sampler.batch_size=8",
                     "--data", data, "--output", out_root], user_env, check=True).stdout.strip()
    wait_for(probe, user_env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED")
    evaluated = json.loads((out_root / "probe" / "eval.json").read_text())
    assert evaluated["pretrained_model"] == str(out / "encoder.pdparams")
    assert evaluated["last"]["images"] == 16      # every validation image once across both nodes


def test_a_job_larger_than_the_cluster_stays_pending_with_slurms_reason(user_env):
    ref = submit(user_env, "three-nodes", nodes=3)
    # Slurm's words for "more nodes than the partition has" (which one depends on its last pass).
    too_big = ("PartitionNodeLimit", "PartitionConfig")
    st, _ = wait_for(ref, user_env, lambda st: st["reason"] is not None, what="a pending reason", timeout=30)
    assert st["state"] == "PENDING" and st["reason"] in too_big, st
    shown = run_cli(["status", ref], user_env, check=True).stdout
    assert any(f"{ref}  PENDING  ({reason})" in shown for reason in too_big), shown
    listed = run_cli(["list", "--backend", "slurm"], user_env, check=True).stdout
    assert any(line.split()[:3] == [ref, "pretrain", "PENDING"] for line in listed.splitlines()), listed
    assert "cancelled" in run_cli(["cancel", ref], user_env, check=True).stdout
    assert status(ref, user_env)["state"] == "CANCELLED"


def test_cancel_mid_run_checkpoints_on_term(tmp_path, user_env, fmnist):
    # No epoch-end checkpoint within reach: any checkpoint found was written on TERM.
    ref = submit(user_env, "cancel-me", "--data", fmnist, "-o", "Global.epochs=300",
                 "-o", "Global.save_interval=300")
    wait_for(ref, user_env, lambda st: (st["progress"] or {}).get("global_step", 0) >= 3,
             what="training steps")
    # status of a running job: the trainer's own progress record (64 images, 8 per rank, 2 ranks:
    # 4 steps per epoch), read from the shared filesystem, and where the output lives.
    shown = run_cli(["status", ref], user_env, check=True).stdout
    assert re.search(r"\n  progress: epoch \d+/300  step [1-4]/4  loss -?\d+\.\d{4}  "
                     r"[\d.]+ img/s  ETA (\d+h\d\dm|\d+m\d\ds)\n", shown), shown
    assert f"\n  output: {tmp_path / 'jobs' / 'cancel-me' / 'output'}\n" in shown
    said = run_cli(["cancel", ref], user_env, check=True).stdout
    assert said.startswith(f"cancelled {ref}") and "stopped after TERM" in said, said
    st = status(ref, user_env)
    assert st["state"] == "CANCELLED", st
    checkpoints = list((tmp_path / "jobs" / "cancel-me" / "output" / "checkpoints").glob("*.pdckpt"))
    assert len(checkpoints) == 1, checkpoints
    train_log = (tmp_path / "jobs" / "cancel-me" / "output" / "train.log").read_text()
    assert "SIGTERM received" in train_log and f"saved checkpoint {checkpoints[0]}" in train_log
    assert "Terminating with signal 15" in rank0_log(ref, user_env)   # paddle's launcher got TERM too


def test_time_limit_warning_reaches_the_trainer(tmp_path, user_env, fmnist):
    """--signal=B:TERM@grace signals only the batch shell; the script must pass TERM on to the
    trainer. `scancel --batch --signal=TERM` delivers exactly that signal without waiting for a
    real time limit (Slurm checks those only about once a minute)."""
    ref = submit(user_env, "time-limit", "--data", fmnist, "-o", "Global.epochs=300",
                 "-o", "Global.save_interval=300")
    job_id = ref.removeprefix("slurm://")
    wait_for(ref, user_env, lambda st: (st["progress"] or {}).get("global_step", 0) >= 3,
             what="training steps")
    subprocess.run(["scancel", "--batch", "--signal=TERM", job_id], env=user_env, check=True)
    final, _ = wait_for(ref, user_env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=90)
    assert "exit code" in final["reason"], final
    job_dir = tmp_path / "jobs" / "time-limit"
    assert "TERM received, passing it to the tasks" in "".join(
        p.read_text() for p in (job_dir / "logs").glob("batch-*.out"))
    checkpoints = list((job_dir / "output" / "checkpoints").glob("*.pdckpt"))
    assert len(checkpoints) == 1, checkpoints
    assert "SIGTERM received" in (job_dir / "output" / "train.log").read_text()


def test_requeue_mid_run_resumes_from_the_checkpoint(tmp_path, user_env, fmnist):
    epochs = 12
    ref = submit(user_env, "requeue-me", "--data", fmnist, "-o", f"Global.epochs={epochs}")
    job_id = ref.removeprefix("slurm://")
    wait_for(ref, user_env, lambda st: (st["progress"] or {}).get("epoch", 0) >= 2,
             what="epoch 2")
    scontrol("requeue", job_id, env=user_env)
    pending, _ = wait_for(ref, user_env, lambda st: st["state"] == "PENDING", what="PENDING after requeue")
    assert "requeued 1 time" in pending["reason"], pending
    # Slurm holds a requeued job back for two minutes (its BeginTime); let it start now.
    scontrol("update", f"JobId={job_id}", "StartTime=now", env=user_env)
    final, _ = wait_for(ref, user_env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED after requeue")
    assert final["detail"]["restarts"] == 1

    log = rank0_log(ref, user_env)
    output = tmp_path / "jobs" / "requeue-me" / "output"
    assert "SIGTERM received" in (output / "train.log").read_text()
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and " at epoch " in resumed[0] and ", step " in resumed[0], resumed
    assert "simsiam-job: job " + job_id + " (requeue 1, group start 1)" in (
        "".join(p.read_text() for p in (tmp_path / "jobs" / "requeue-me" / "logs").glob("batch-*.out")))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    # Resumed exactly where TERM stopped it: every step once, none lost or repeated.
    assert [r["epoch"] for r in records if r["type"] == "epoch"][-1] == epochs
    assert [r["global_step"] for r in records if r["type"] == "step"] == list(range(1, epochs * 4 + 1))


def test_bad_input_never_reaches_sbatch(tmp_path, user_env):
    before = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], env=user_env,
                            capture_output=True, text=True, check=True).stdout.split()
    bad_config = run_cli(["submit", "pretrain", "--name", "bad-config", *TINY,
                          "-o", "Optimizer.momentun=0.9"], user_env)
    assert_one_line_error(bad_config, 2, "momentum")
    bad_option = run_cli(["submit", "pretrain", "--name", "bad-option", *TINY, "--set", "time=forever"],
                         user_env)
    assert_one_line_error(bad_option, 2, "time")
    after = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], env=user_env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert after == before
    assert not (tmp_path / "jobs").exists()


def test_slurm_refusing_a_job_is_one_line_and_leaves_no_job_directory(tmp_path, user_env):
    proc = run_cli(["submit", "pretrain", "--name", "no-partition", *TINY, "--set", "partition=nope"],
                   user_env)
    assert_one_line_error(proc, 1, "sbatch: Batch job submission failed: Invalid partition name specified")
    assert not (tmp_path / "jobs" / "no-partition").exists()


def test_hostile_values_reach_the_nodes_unchanged(tmp_path, user_env):
    """The job's `python` is a stand-in for paddle's launcher that records its argv and environment
    on each node, so what srun delivered can be compared with what was asked for (paddle itself is
    not started), and records the rank as done, as the trainer would; any other use of `python`
    (the batch script's decision) is the real one."""
    record = tmp_path / "argv"
    record.mkdir()
    venv = overlay_venv(tmp_path, "argv-venv", {"python": (
        f"#!{sys.executable}\nimport json, os, socket, sys\n"
        f"if sys.argv[1:3] != ['-m', 'paddle.distributed.launch']:\n"
        f"    os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
        f"json.dump({{'argv': sys.argv[1:], 'weird': os.environ.get('WEIRD'), 'host': socket.gethostname()}},"
        f" open(os.path.join({str(record)!r}, 'rank' + os.environ['SLURM_NODEID'] + '.json'), 'w'))\n"
        f"from trainer import contract\n"
        f"contract.write_outcome(os.environ[contract.OUTCOME_DIR_ENV], "
        f"contract.Outcome(contract.End.DONE, int(os.environ['SLURM_NODEID']), 0))\n")})
    env = {**user_env, "SIMSIAM_JOB_SLURM_VENV": str(venv)}
    data = f"/data/{HOSTILE}\\ *"
    weird = f"{HOSTILE}\nsecond line 'q' \"dq\" \\ $HOME"
    ref = submit(env, "argv", "--data", data, "--env", f"WEIRD={weird}")
    wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=120)
    got = {r: json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)}
    node1_ip = subprocess.run(["getent", "hosts", "node1"], capture_output=True, text=True).stdout.split()
    for rank, host in ((0, "node1"), (1, "node2")):
        argv = got[rank]["argv"]
        assert got[rank]["host"] == host and got[rank]["weird"] == weird
        assert argv[:2] == ["-m", "paddle.distributed.launch"]
        assert argv[argv.index("--rank") + 1] == str(rank) and argv[argv.index("--nnodes") + 1] == "2"
        master_host, port = argv[argv.index("--master") + 1].rsplit(":", 1)
        assert port.isdigit() and (not node1_ip or master_host == node1_ip[0])
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
        assert f"DataLoader.Train.dataset.root={json.dumps(data + '/train')}" in overrides
    assert (got[0]["argv"][got[0]["argv"].index("--master") + 1]
            == got[1]["argv"][got[1]["argv"].index("--master") + 1])
    assert not list(tmp_path.rglob("pwned"))


def test_server_dry_run_asks_slurm_and_queues_nothing(tmp_path, user_env):
    def queued():
        return subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], env=user_env,
                              capture_output=True, text=True, check=True).stdout.split()

    before = queued()
    ok = run_cli(["submit", "pretrain", "--nodes", "2", "--name", "dry", *TINY, "--dry-run", "server"],
                 user_env)
    assert ok.returncode == 0 and ok.stdout.strip() == "slurm://dry-run", ok.stderr
    refused = run_cli(["submit", "pretrain", "--name", "dry", *TINY, "--dry-run", "server",
                       "--set", "partition=nope"], user_env)
    assert_one_line_error(refused, 1, "nope")
    assert queued() == before and not (tmp_path / "jobs").exists()
