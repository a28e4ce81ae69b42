"""Loaded into every ``simsiam-train`` process of the JobSet tests' pods (by a sitecustomize module
on PYTHONPATH; --env may not set PATH), where only rank 0 sees the output claim:

- prints ``rank-state R SHA256`` (a digest of this rank's final model state) on stdout, which the
  pod's log carries, so a test can compare the ranks' parameters without a shared directory;
- with FAIL_RANK=R, rank R starts with a data root that does not exist: the real trainer's bad-input
  exit (2) with its own line, on that rank only.

Everything else is the real CLI (exit codes, SIGTERM, auto-resume).

A script, not a helper: test_jobset_nodes.py copies this file by path onto the data claim, so it
stays beside its test (what tests import lives in tests/helpers/)."""
import hashlib
import os
import sys

from trainer.engine import pretrain

_train = pretrain.train
RANK = int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def train_and_print_digest(cfg):
    net = _train(cfg)
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    print(f"rank-state {RANK} {digest.hexdigest()}", flush=True)
    return net


pretrain.train = train_and_print_digest  # cli resolves the task by name at run time

if os.environ.get("FAIL_RANK") == str(RANK):
    sys.argv += ["-o", "DataLoader.Train.dataset.root=/data/no-such-split"]
