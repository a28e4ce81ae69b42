"""Run under `python -m paddle.distributed.launch`: pretrain as simsiam-train would, then save this
rank's final model state as RANK_STATE_DIR/rank<N>.pdparams so the test can compare ranks.
With RANK_OUTPUT_DIR set, each rank writes to RANK_OUTPUT_DIR/rank<N> (as pods with their own volume)."""
import os
import sys

import paddle

from trainer.config import load_config
from trainer.engine.pretrain import train

if __name__ == "__main__":
    args = sys.argv[1:]
    overrides = [args[i + 1] for i in range(len(args)) if args[i] == "-o"]
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    if os.environ.get("RANK_OUTPUT_DIR"):
        overrides.append(f"Global.output_dir={os.path.join(os.environ['RANK_OUTPUT_DIR'], f'rank{rank}')}")
    net = train(load_config(args[args.index("-c") + 1], overrides))
    paddle.save(net.state_dict(), os.path.join(os.environ["RANK_STATE_DIR"], f"rank{rank}.pdparams"))
