"""What a rank's watchdog concludes about a peer, with the peer a real process beating its
heartbeat file: killed, frozen (a lost node: no connection reset, no exit), failed, or cleanly gone."""
import signal
import subprocess
import sys
import time

import pytest

from trainer.watchdog import FAILED, LEFT, PeerView

BEAT = ("import sys, time\nfrom trainer.watchdog import Heartbeat\n"
        "h = Heartbeat(sys.argv[1], 1)\nh.write()\nprint('beating', flush=True)\n"
        "for line in sys.stdin:\n"
        "    if line.strip() == 'beat': h.write()\n"
        "    elif line.strip(): h.write(line.split()[0], "
        "'exit 9' if line.startswith('failed') else 'exit 0'); "
        "print('marked', flush=True)\n"
        "    if line.strip() != 'beat': time.sleep(120)\n")


@pytest.fixture
def peer(tmp_path):
    """Rank 1, a real process: writes its heartbeat on each 'beat' line, or marks a state."""
    proc = subprocess.Popen([sys.executable, "-c", BEAT, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "beating"
    yield proc
    proc.kill()
    proc.wait()


def _until_lost(view, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lost = view.check()
        if lost is not None:
            return lost
        time.sleep(0.05)
    return None


def test_a_killed_peer_on_this_machine_is_lost_at_once(tmp_path, peer):
    view = PeerView(tmp_path, rank=0, world_size=2, timeout=3600)
    assert view.check() is None
    peer.send_signal(signal.SIGKILL)
    peer.wait()
    rank, why, _ = _until_lost(view, 30)
    assert rank == 1 and f"pid {peer.pid}" in why and "no longer exists" in why


def test_a_frozen_peer_is_lost_when_its_counter_stops_for_the_timeout(tmp_path, peer):
    view = PeerView(tmp_path, rank=0, world_size=2, timeout=1.0)
    for _ in range(3):                      # alive while the counter moves, however long it takes
        peer.stdin.write("beat\n")
        peer.stdin.flush()
        time.sleep(0.6)
        assert view.check() is None
    peer.send_signal(signal.SIGSTOP)        # a lost node: the process neither beats nor exits
    rank, why, _ = _until_lost(view, 30)
    assert rank == 1 and why.startswith("no heartbeat from rank 1")


def test_a_peer_that_never_beats_is_lost_after_the_timeout(tmp_path):
    view = PeerView(tmp_path, rank=1, world_size=2, timeout=0.5)
    rank, why, _ = _until_lost(view, 30)
    assert rank == 0 and why.startswith("no heartbeat from rank 0")


def test_a_peer_that_failed_is_named_with_its_reason(tmp_path, peer):
    view = PeerView(tmp_path, rank=0, world_size=2, timeout=3600)
    peer.stdin.write(f"{FAILED}\n")
    peer.stdin.flush()
    assert peer.stdout.readline().strip() == "marked"
    rank, why, _ = view.check()
    assert rank == 1 and "failed: exit 9" in why


def test_a_peer_that_left_cleanly_is_never_lost(tmp_path, peer):
    view = PeerView(tmp_path, rank=0, world_size=2, timeout=0.5)
    peer.stdin.write(f"{LEFT}\n")
    peer.stdin.flush()
    assert peer.stdout.readline().strip() == "marked"
    assert view.check() is None
    peer.send_signal(signal.SIGKILL)        # ... and then its process is gone, as after any exit
    peer.wait()
    time.sleep(1.0)
    assert view.check() is None



@pytest.mark.parametrize("exit_code, passed_on", [(2, 2), (9, 75)])
def test_a_peer_whose_retry_cannot_help_is_followed_with_its_exit_code(tmp_path, exit_code, passed_on):
    """A peer that ended with bad input makes this rank leave with the same code (so a scheduler
    that reads whichever rank failed first decides alike); any other failure with the peer-lost code."""
    from trainer.watchdog import Watchdog, generation_dir

    peer = Watchdog(tmp_path, "g1", rank=1, world_size=2, timeout=3600).start()
    peer.finish(exit_code, "dataset root /data/x does not exist")
    lost = PeerView(generation_dir(tmp_path, "g1"), rank=0, world_size=2, timeout=3600).check()
    assert lost.rank == 1 and lost.exit_code == passed_on
    assert f"failed: exit {exit_code}" in lost.why and "dataset root /data/x does not exist" in lost.why
