"""Checkpoints written in the background: the file holds the state at the moment of the save (byte
for byte what a synchronous save writes), writes never overlap, a failed write reaches the training
thread, and a SIGTERM that arrives while a checkpoint is written still ends with its own checkpoint
complete before the run reports the stop.

Some tests hold or slow the real write (ckpt.save_object) to make the overlap they check certain;
the files are still written by it."""
import os
import signal
import threading
import time

import numpy as np
import paddle
import pytest
from helpers.paths import REPO
from helpers.trainer import TINY_MODEL

from trainer import checkpoint as ckpt
from trainer.config import load_config


def small_model():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(64, 64), paddle.nn.BatchNorm1D(64), paddle.nn.Linear(64, 8))
    optimizer = paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=net.parameters())
    train_step(net, optimizer)                 # momentum buffers exist from the first step on
    return net, optimizer


def train_step(net, optimizer):
    net(paddle.randn([16, 64])).square().mean().backward()
    optimizer.step()
    optimizer.clear_grad()


def state(net, optimizer, global_step=1):
    return {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(optimizer, net), "epoch": 0,
            "step": global_step, "global_step": global_step, "rng": ckpt.rng_state()}


def test_the_file_holds_the_state_of_the_save_byte_for_byte(tmp_path, monkeypatch):
    net, optimizer = small_model()
    expected = ckpt.save_checkpoint(tmp_path / "sync", state(net, optimizer)).read_bytes()
    ckpt.save_object(net.state_dict(), tmp_path / "sync" / "weights")
    gate, real_save = threading.Event(), ckpt.save_object
    monkeypatch.setattr(ckpt, "save_object", lambda obj, path: (gate.wait(30), real_save(obj, path)))

    writer = ckpt.CheckpointWriter()
    path = writer.save(tmp_path / "async", state(net, optimizer),
                       {tmp_path / "async" / "weights": net.state_dict()})
    before = net[0].weight.numpy().copy()
    train_step(net, optimizer)                 # training goes on while the write waits
    paddle.rand([4])
    assert not np.array_equal(before, net[0].weight.numpy())
    gate.set()
    writer.wait()
    assert path.read_bytes() == expected
    assert (tmp_path / "async" / "weights").read_bytes() == (tmp_path / "sync" / "weights").read_bytes()


def test_writes_never_overlap_and_each_completes_in_order(tmp_path, monkeypatch):
    active, most, lock = 0, 0, threading.Lock()
    real_save = ckpt.save_object

    def slow_save(obj, path):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.2)                        # widen the window in which a second write could start
        real_save(obj, path)
        with lock:
            active -= 1

    monkeypatch.setattr(ckpt, "save_object", slow_save)
    net, optimizer = small_model()
    writer, done = ckpt.CheckpointWriter(), []
    for global_step in (1, 2, 3):
        writer.save(tmp_path, state(net, optimizer, global_step),
                    {tmp_path / f"weights{global_step}": net.state_dict()}, after=done.append)
        train_step(net, optimizer)
    writer.wait()
    assert most == 1
    assert [p.name for p in done] == [f"epoch_000_step_0000000{s}.pdckpt" for s in (1, 2, 3)]
    assert [ckpt.load_checkpoint(p)["global_step"] for p in done] == [1, 2, 3]


def test_a_failed_write_is_raised_in_the_training_thread_once(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    net, optimizer = small_model()
    writer = ckpt.CheckpointWriter()
    writer.save(tmp_path / "not-a-folder", state(net, optimizer))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()                              # reported once; the writer goes on working
    path = writer.save(tmp_path / "ok", state(net, optimizer))
    writer.wait()
    assert ckpt.load_checkpoint(path)["global_step"] == 1


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_write_ends_with_the_stop_checkpoint_complete(
        tmp_path, image_root, monkeypatch):
    """SIGTERM arrives while the first periodic checkpoint is being written (slowly). The run must
    wait for that write, write the stop checkpoint, and only then report the stop (exit 143)."""
    from trainer.cli import run_task

    out = tmp_path / "run"
    overrides = [*TINY_MODEL[1::2], f"Global.output_dir={out}", f"DataLoader.Train.dataset.root={image_root}",
                 "DataLoader.Train.sampler.batch_size=4", "Global.print_batch_step=1", "Global.epochs=12",
                 "Global.save_interval_steps=2", "DataLoader.Train.loader.num_workers=0"]
    cfg = load_config(str(REPO / "trainer/configs/simsiam_cifar_resnet18_cpu.yaml"), overrides)
    real_save, active, most, lock = ckpt.save_object, 0, 0, threading.Lock()

    def slow_save(obj, path):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        if path.name == "epoch_000_step_00000002.pdckpt":
            os.kill(os.getpid(), signal.SIGTERM)      # preempted while this checkpoint is written
        time.sleep(0.5)
        real_save(obj, path)
        with lock:
            active -= 1

    monkeypatch.setattr(ckpt, "save_object", slow_save)
    assert run_task(cfg) == 143
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1]   # as soon as the run has returned
    stopped = ckpt.load_checkpoint(newest)
    assert stopped["global_step"] > 2 and most == 1
    assert f"saved checkpoint {newest}" in (out / "train.log").read_text()
    assert ckpt.load_checkpoint(out / "checkpoints" / "epoch_000_step_00000002.pdckpt")["global_step"] == 2
