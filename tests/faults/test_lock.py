"""One writer per output directory: the lock names a live holder, and a gone holder's lock is
taken over with a warning. Holders are real processes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.paths import REPO
from helpers.trainer import run_cli, tiny_run_args
from helpers.twonodes import wait_for_step

from trainer import contract
from trainer.lock import LockError, RunLock
from trainer.watchdog import machine, write_json

HOLD = ("import sys, time\nfrom trainer.lock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock on tmp_path/out."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_second_run_fails_naming_the_holder_then_takes_over_when_it_is_gone(holder):
    out, proc = holder
    with pytest.raises(LockError) as refused:
        RunLock(out).acquire()
    assert f"pid {proc.pid}" in str(refused.value) and "in use by" in str(refused.value)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = RunLock(out)
    warning = lock.acquire()
    assert warning and f"{proc.pid} no longer exists" in warning
    assert json.loads((out / contract.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / contract.LOCK).exists()


def _foreign_lock(out, **fields):
    out.mkdir(parents=True, exist_ok=True)
    record = {"host": "another-node", "pidns": 1, "pid": 4242, "job": "", "started": "earlier",
              "token": "theirs", "beat": 7, "time": time.time(), **fields}
    (out / contract.LOCK).write_text(json.dumps(record))


def test_another_hosts_lock_is_respected_while_its_heartbeat_is_fresh(tmp_path):
    _foreign_lock(tmp_path)
    with pytest.raises(LockError, match="host another-node, pid 4242"):
        RunLock(tmp_path).acquire()


def test_another_hosts_lock_with_an_old_heartbeat_is_taken_over(tmp_path):
    _foreign_lock(tmp_path, time=time.time() - 3600)
    lock = RunLock(tmp_path)
    assert "heartbeat is 3600 s old" in lock.acquire()
    lock.release()


def test_an_earlier_start_of_the_same_job_on_another_host_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.JOB_ENV, "simsiam-pretrain-x7k2p")
    monkeypatch.setenv(contract.JOB_ID_ENV, "kubernetes://team/simsiam-pretrain-x7k2p")
    _foreign_lock(tmp_path, job="simsiam-pretrain-x7k2p", job_id="kubernetes://team/simsiam-pretrain-x7k2p")
    lock = RunLock(tmp_path)
    assert "earlier start of the same job" in lock.acquire()
    lock.release()


def test_another_job_of_the_same_name_is_not_taken_for_an_earlier_start(tmp_path, monkeypatch):
    """Two users may both call a run 'writer': the name alone never hands over a live lock."""
    monkeypatch.setenv(contract.JOB_ENV, "writer")
    monkeypatch.setenv(contract.JOB_ID_ENV, "/home/b/.local/share/simsiam-job/runs/writer")
    _foreign_lock(tmp_path, job="writer", job_id="/home/a/.local/share/simsiam-job/runs/writer")
    with pytest.raises(LockError, match="is in use by job writer on host another-node"):
        RunLock(tmp_path).acquire()


def test_an_earlier_start_of_the_same_job_that_looks_like_this_process_is_taken_over(tmp_path, monkeypatch):
    """A replaced Kubernetes pod of rank 0: the same hostname, and its new pid namespace got the old
    one's inode, where the old holder's pid is alive again (here: this very process)."""
    monkeypatch.setenv(contract.JOB_ENV, "simsiam-pretrain-x7k2p")
    monkeypatch.setenv(contract.JOB_ID_ENV, "kubernetes://team/simsiam-pretrain-x7k2p")
    me = machine()
    _foreign_lock(tmp_path, job="simsiam-pretrain-x7k2p", job_id="kubernetes://team/simsiam-pretrain-x7k2p",
                  host=me["host"], pidns=me["pidns"], pid=os.getpid())
    lock = RunLock(tmp_path)
    assert "earlier start of the same job" in lock.acquire()
    lock.release()


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    lock = RunLock(tmp_path, refresh_every=0.05)
    lock.acquire()
    first = json.loads((tmp_path / contract.LOCK).read_text())["beat"]
    deadline = time.monotonic() + 30
    while json.loads((tmp_path / contract.LOCK).read_text())["beat"] == first:
        assert time.monotonic() < deadline, "the lock's heartbeat never moved"
        time.sleep(0.05)
    lock.release()
    assert not (tmp_path / contract.LOCK).exists()


def test_release_leaves_a_successors_lock(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    # this run was judged gone (e.g. frozen for minutes) and another one took the directory over
    write_json(tmp_path / contract.LOCK, {**machine(), "token": "successor", "time": time.time()})
    lock.release()
    assert json.loads((tmp_path / contract.LOCK).read_text())["token"] == "successor"


@pytest.mark.slow
def test_two_runs_on_one_output_directory(tmp_path, image_root):
    """A second simsiam-train on a directory a live run writes fails at once naming it; once that
    run is killed (its lock left behind), the next run takes the directory over with a warning."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "trainer.cli",
                              *tiny_run_args(out, image_root, "-o", "Global.epochs=500")],
                             cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(out, 2)
        second = run_cli(tiny_run_args(out, image_root, "-o", "Global.epochs=1"))
        assert second.returncode == contract.EXIT_BAD_INPUT, second.stderr[-3000:]
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]        # one line
        assert f"in use by a run on host {os.uname().nodename}, pid {first.pid}" in second.stderr
        assert first.poll() is None                                 # the holder trains on, untouched
    finally:
        first.kill()
        first.wait()
    third = run_cli(tiny_run_args(out, image_root, "-o", "Global.auto_resume=True",
                                  "-o", "Global.max_train_step=2"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the lock of a run on host {os.uname().nodename}, pid {first.pid}" in \
        (out / contract.TRAIN_LOG).read_text()
    assert not (out / contract.LOCK).exists()
