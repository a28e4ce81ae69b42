"""``simsiam-train`` that also saves this rank's final model state (RANK_STATE_DIR/rank<N>.pdparams)
so a test can compare ranks; everything else is the real CLI (exit codes, SIGTERM, auto-resume).

A script, not a helper: test_slurm_cluster.py runs it and tests/k8s/test_nodes.py copies it into
the pods by path, so it stays here (what tests import lives in tests/helpers/)."""
import os
import sys

import paddle

from trainer import cli
from trainer.engine import pretrain

_train = pretrain.train


def train_and_keep_state(cfg):
    net = _train(cfg)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    paddle.save(net.state_dict(), os.path.join(os.environ["RANK_STATE_DIR"], f"rank{rank}.pdparams"))
    return net


pretrain.train = train_and_keep_state  # cli resolves the task by name at run time

if __name__ == "__main__":
    sys.exit(cli.main())
