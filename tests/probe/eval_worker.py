"""Run by test_distributed_eval.py under `python -m paddle.distributed.launch` (one copy per rank).

argv: VAL_ROOT PROBE_WEIGHTS OUT_JSON. Evaluates a fixed probe with the exact evaluator.
"""
import json
import sys

import paddle
import paddle.distributed as dist

from trainer.data import build_eval_loader
from trainer.engine.evaluate import evaluate
from trainer.models import build_model

root, weights_path, out = sys.argv[1:4]
world = int(dist.get_world_size())
if world > 1:
    dist.init_parallel_env()
rank = int(dist.get_rank())
section = {"dataset": {"name": "ImageFolder", "root": root,
                       "transform": [{"ToTensor": None},
                                     {"Normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}]},
           "sampler": {"name": "DistributedBatchSampler", "batch_size": 4, "drop_last": False,
                       "shuffle": False}}
loader = build_eval_loader(section, rank=rank, world_size=world)
model = build_model({"name": "pixels_linearprobe", "class_num": 10})
model.set_state_dict(paddle.load(weights_path))
result = evaluate(model, loader, world_size=world)
result["rank_images"] = sum(len(labels) for _, labels in loader)
with open(f"{out}.{rank}", "w") as f:
    json.dump(result, f)
