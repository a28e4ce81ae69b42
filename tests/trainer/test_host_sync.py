"""No training step waits for the device: the probe's step and LARS keep their numbers on the
device; values come back to the host only on logged steps."""
import numpy as np
import paddle
from helpers.trainer import HostReads

from trainer.config import load_config, shipped_config
from trainer.engine import linear_probe
from trainer.optim.lars import MomentumLARC


def test_lars_step_reads_nothing_back_to_the_host(monkeypatch):
    paddle.seed(0)
    layer = paddle.nn.Linear(8, 4)
    opt = MomentumLARC(0.5, layer.parameters(), weight_decay=0.01, clip=True)
    (layer(paddle.ones([2, 8])) ** 2).sum().backward()
    before = layer.weight.numpy().copy()
    reads = HostReads(monkeypatch)
    opt.step()
    assert reads.count == 0
    monkeypatch.undo()
    assert not np.array_equal(before, layer.weight.numpy())


def probe_host_reads(monkeypatch, tmp_path, image_root, batch_size):
    """Host reads during one epoch of the probe on 16 images, logging only at the epoch's end."""
    cfg = load_config(shipped_config("simsiam_cifar_resnet18_fmnist_lp_cpu"), [
        "Model.width=4", "Model.class_num=2", "Global.epochs=1", "Global.print_batch_step=1000",
        f"Global.output_dir={tmp_path / str(batch_size)}", f"DataLoader.Train.dataset.root={image_root}",
        f"DataLoader.Train.sampler.batch_size={batch_size}", "DataLoader.Train.loader.num_workers=0"])
    del cfg["DataLoader"]["Eval"]
    reads = HostReads(monkeypatch)
    linear_probe.train(cfg)
    monkeypatch.undo()
    steps = [line for line in (tmp_path / str(batch_size) / "metrics.jsonl").read_text().splitlines()
             if '"type": "step"' in line]
    assert len(steps) == 1
    return reads.count


def test_probe_reads_back_per_log_not_per_step(monkeypatch, tmp_path, image_root):
    """8 steps or 4 steps, one log line each: the same number of host reads."""
    assert probe_host_reads(monkeypatch, tmp_path, image_root, 2) == \
        probe_host_reads(monkeypatch, tmp_path, image_root, 4)
