"""Process group set-up: paddle.distributed.fleet collective mode under paddle.distributed.launch,
a plain single process otherwise (CPU multi-process runs use gloo, which the launcher sets up)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import paddle
import paddle.distributed as pdist
from paddle import nn

from trainer import outcome
from trainer.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: str            # "cpu" or "gpu:N"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """Processes in the job as paddle.distributed.launch announces them (1 when run directly)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init(device: str) -> DistEnv:
    """Select the device and, when launched with several processes, join the collective group."""
    if device == "gpu" and not paddle.is_compiled_with_cuda():
        raise ConfigError("Global.device is 'gpu' but this PaddlePaddle build has no CUDA "
                          "(install paddlepaddle-gpu, or use -o Global.device=cpu)")
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("PADDLE_RANK_IN_NODE", "0")))
    # paddle.distributed.launch gives each process its own GPU through FLAGS_selected_gpus.
    paddle.set_device("gpu" if device == "gpu" else "cpu")
    world_size = launched_world_size()
    if world_size > 1:
        from paddle.distributed import fleet
        fleet.init(is_collective=True)      # returns once every rank has joined the group
    outcome.mark_started()                  # so the node's start timeout ends here
    rank = pdist.get_rank() if world_size > 1 else 0
    # "cpu" or "gpu:N" (str() of the place would be "Place(gpu:N)", which no device test matches)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=paddle.device.get_device())


def wrap(env: DistEnv, model: nn.Layer, optimizer):
    """Fleet's data-parallel model and optimizer (gradients all-reduced); unchanged on one process."""
    if env.world_size == 1:
        return model, optimizer
    from paddle.distributed import fleet
    return fleet.distributed_model(model), fleet.distributed_optimizer(optimizer)


def use_sync_batch_norm(env: DistEnv, model: nn.Layer) -> nn.Layer:
    """SyncBatchNorm across GPUs (the paper's BN statistics are over the global batch); plain BN on
    CPU, where paddle has no SyncBatchNorm kernel."""
    if env.world_size > 1 and env.device.startswith("gpu"):
        return sync_batch_norm(model)
    return model


def sync_batch_norm(model: nn.Layer) -> nn.Layer:
    """paddle's conversion, keeping the state-dict names: paddle gives an affine-free SyncBatchNorm
    constant weight=1/bias=0 *parameters*, which would add e.g. encoder.fc.7.weight to checkpoints;
    here they become non-persistent buffers (same forward, same names as the plain model)."""
    affine_free = {name for name, layer in model.named_sublayers()
                   if isinstance(layer, nn.layer.norm._BatchNormBase) and layer.weight is None}
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, layer in model.named_sublayers():
        if name in affine_free:
            for key in ("weight", "bias"):
                constant = layer._parameters.pop(key)
                layer.register_buffer(key, paddle.to_tensor(constant.numpy()), persistable=False)
    return model


def all_reduce_max(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise largest values over all ranks (e.g. 'did any rank get SIGTERM'), one collective."""
    if env.world_size == 1:
        return list(values)
    tensor = paddle.to_tensor([float(v) for v in values], dtype="float32")
    pdist.all_reduce(tensor, op=pdist.ReduceOp.MAX)
    return tensor.numpy().tolist()


def average_buffers(env: DistEnv, model: nn.Layer) -> None:
    """Average BN running statistics over ranks, so the saved/exported model reflects every rank's
    data and all ranks hold the same state (DataParallel only synchronizes trainable parameters).
    Paddle keeps running statistics as non-trainable parameters, hence the stop_gradient test."""
    if env.world_size == 1:
        return
    for tensor in model.state_dict().values():
        if tensor.stop_gradient and tensor.dtype in (paddle.float32, paddle.float16, paddle.bfloat16):
            pdist.all_reduce(tensor, op=pdist.ReduceOp.SUM)
            tensor.set_value(tensor / env.world_size)


def broadcast_from_main(value, env: DistEnv):
    """Rank 0's `value` (any picklable object) on every rank: one decision for the whole group."""
    if env.world_size == 1:
        return value
    box = [value]
    pdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        pdist.barrier()
