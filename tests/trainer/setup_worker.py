"""Run under `python -m paddle.distributed.launch`: the pretraining's set-up as the trainer does it
(Engine + Pretraining, the real dist.init and fleet group over gloo) on a pretend GPU, then write
what it built to RESULT_DIR/rank<N>.json.

The GPU is pretended at paddle's device boundary only: the CPU build cannot select a GPU, so
paddle.set_device selects the CPU, paddle.device.get_device answers "gpu:<local rank>" as paddle's
CUDA build does under paddle.distributed.launch, and paddle.is_compiled_with_cuda says True while
dist.init checks it (not later: paddle's own seeding would then look for CUDA devices). Training
itself is not run: paddle's CPU build has no SyncBatchNorm kernel.
"""
import json
import os
import sys

import paddle

from trainer.config import load_config

if __name__ == "__main__":
    from trainer import dist
    from trainer.engine.loop import Engine
    from trainer.engine.pretrain import Pretraining

    real_set_device, real_init, compiled_with_cuda = (paddle.set_device, dist.init,
                                                      paddle.is_compiled_with_cuda)
    local_rank = os.environ["PADDLE_LOCAL_RANK"]
    paddle.set_device = lambda name: real_set_device("cpu")
    paddle.device.get_device = lambda: f"gpu:{local_rank}"

    def init_on_a_pretend_gpu(device):
        paddle.is_compiled_with_cuda = lambda: True
        try:
            return real_init(device)
        finally:
            paddle.is_compiled_with_cuda = compiled_with_cuda

    dist.init = init_on_a_pretend_gpu
    args = sys.argv[1:]
    cfg = load_config(args[args.index("-c") + 1], [args[i + 1] for i in range(len(args)) if args[i] == "-o"])
    engine = Engine(cfg)
    task = Pretraining(engine)
    norms = {type(layer).__name__ for layer in task.net.sublayers() if "BatchNorm" in type(layer).__name__}
    with open(os.path.join(os.environ["RESULT_DIR"], f"rank{engine.env.rank}.json"), "w") as f:
        json.dump({"device": engine.env.device, "threads": engine.threads, "norms": sorted(norms),
                   "state_names": list(task.net.state_dict())}, f)
