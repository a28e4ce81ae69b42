"""A job reference works wherever its run lives, and Ctrl-C during --wait stops only the waiting.

Real local runs (paddle, CPU, one process) on a tiny Fashion-MNIST folder, driven through the
`simsiam-job` CLI as a user drives it; nothing is mocked.
"""

import select
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers.cli import assert_one_line_error, job_status, run_cli
from helpers.paths import BIN, CPU_CONFIG, REPO

pytestmark = pytest.mark.slow

PROBE_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_fmnist_lp_cpu.yaml"
TINY = ["-o", "Model.width=4", "-o", "Model.dim=16", "-o", "Model.pred_dim=8",
        "-o", "DataLoader.Train.sampler.batch_size=8", "-o", "Global.print_batch_step=1"]


@pytest.fixture
def data(tmp_path):
    subprocess.run([sys.executable, "-m", "trainer.data.fashion_mnist", str(tmp_path / "fm"),
                    "--train", "64", "--val", "40"], check=True, capture_output=True)
    return tmp_path / "fm"


def read_lines_until(stream, predicate, timeout):
    """Lines from a pipe until one satisfies predicate (or the timeout); returns all read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1.0)
        if ready:
            line = stream.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if predicate(line):
                break
    return lines


def test_run_made_elsewhere_is_found_by_its_jobref_and_ctrl_c_leaves_it_running(
        user_env, tmp_path, data, request):
    runs = tmp_path / "elsewhere"
    ref = "local://far"
    proc = subprocess.Popen(
        [str(BIN / "simsiam-job"), "submit", "pretrain", "-c", str(CPU_CONFIG), "--data", str(data),
         "--name", "far", "--set", f"runs_dir={runs}", *TINY, "-o", "Global.epochs=200", "--wait"],
        env=user_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: run_cli(["cancel", ref], user_env, timeout=120))
    try:
        waited = read_lines_until(proc.stderr, lambda line: "epoch" in line, timeout=180)
        assert waited and "epoch" in waited[-1], waited
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (waited, rest)
    assert rest.strip().splitlines() == [
        f"stopped waiting; {ref} keeps running. Follow or stop it:  simsiam-job status {ref}   |   "
        f"simsiam-job logs -f {ref}   |   simsiam-job cancel {ref}"]
    # Without a terminal, --wait writes plain lines, and a line only when it differs from the last.
    assert not any("\r" in line or "\033" in line for line in waited)
    assert all(a != b for a, b in zip(waited, waited[1:], strict=False)), waited

    # No --set runs_dir below: the reference alone finds the run.
    assert job_status(ref, user_env)["state"] == "RUNNING"
    assert "epoch" in run_cli(["logs", ref], user_env, check=True).stdout
    assert any(row.split()[:3] == [ref, "pretrain", "RUNNING"]
               for row in run_cli(["list"], user_env, check=True).stdout.splitlines())
    run_cli(["render", "linear-probe", "--from", ref, "-c", PROBE_CONFIG, "--out", tmp_path / "probe"],
            user_env, check=True)
    probe = yaml.safe_load((tmp_path / "probe" / "config.yaml").read_text())
    assert probe["Global"]["pretrained_model"] == str(runs / "far" / "output" / "encoder.pdparams")
    assert "cancelled" in run_cli(["cancel", ref], user_env, check=True, timeout=120).stdout
    assert job_status(ref, user_env)["state"] == "CANCELLED"
    assert not (tmp_path / "data" / "simsiam-job" / "runs" / "far").exists()


def test_a_reference_to_a_run_that_moved_away_is_not_found(user_env, tmp_path):
    """The index names a directory; a run no longer there is reported missing, never guessed."""
    index = tmp_path / "data" / "simsiam-job" / "run-locations"
    index.mkdir(parents=True)
    (index / "gone").write_text(str(tmp_path / "nowhere") + "\n")
    assert_one_line_error(run_cli(["status", "local://gone"], user_env), 1, "no local run 'gone'")
    assert_one_line_error(run_cli(["status", "local://../../etc"], user_env), 1, "no local run")
