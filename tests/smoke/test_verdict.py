"""The smoke verdict on figures only a GPU cluster produces (multi-GPU BN, AMP). No GPU here, so
these feed the verdict the per-rank records a GPU run would gather; the CPU runs in test_smoke.py
produce the same records for real."""

from __future__ import annotations

import pytest

from trainer.engine.smoke import format_report, loss_fell, summarize

MODEL = "simsiam_resnet50_pretrain"


def gpu_rank(rank: int, **changes) -> dict:
    record = {"rank": rank, "host": f"gpu-node-{rank // 8}", "device": f"gpu:{rank % 8}",
              "images_per_sec": 410.0, "amp_level": "O1", "compute_dtype": "float16",
              "bn_synchronized": True, "allreduce_bytes": 152_000_000, "allreduce_seconds": 0.01,
              "bus_bandwidth_mbps": 150000.0 + rank,
              "loss_first": -0.01, "loss_last": -0.6, "loss_finite": True, "first_bad_step": None,
              "loss_fell": True, "peak_memory_mb": 9000.0, "peak_memory_kind": "device"}
    return {**record, **changes}


def verdict(ranks, level="O1"):
    return summarize(ranks, MODEL, steps=50, batch=64, size=224, amp_level=level)


def test_sixteen_healthy_gpus_pass_with_totals_over_two_nodes():
    report = verdict([gpu_rank(r) for r in range(16)])
    assert report["verdict"] == "PASS", report["reason"]
    assert report["total"]["nodes"] == 2 and report["total"]["images_per_sec"] == pytest.approx(16 * 410.0)
    assert report["total"]["bus_bandwidth_mbps"] == 150000.0          # the slowest rank
    assert report["summary"].startswith("smoke PASS: 16 rank(s) on 2 node(s), 6560.0 images/s, AMP O1, "
                                        "BN synchronized, all-reduce 150000.0 MB/s bus bandwidth at 152.0 MB")
    assert format_report(report).splitlines()[-2].startswith("total")


@pytest.mark.parametrize("changes, level, reason", [
    ({"bn_synchronized": False}, "O1", "BatchNorm is not synchronized across GPUs"),
    ({"compute_dtype": "float32"}, "O1", "FP16.level O1 is set but convolutions ran in float32"),
    ({"loss_fell": False, "loss_last": -0.01}, "O1", "loss did not fall on a fixed batch (rank 3"),
    ({"loss_finite": False, "first_bad_step": 7, "loss_last": float("nan")}, "O1",
     "loss is not finite (rank 3, from step 7 of 50)"),
])
def test_one_bad_rank_fails_the_run_with_the_reason(changes, level, reason):
    report = verdict([gpu_rank(r, **(changes if r == 3 else {})) for r in range(8)], level)
    assert report["verdict"] == "FAIL" and report["reason"].startswith(reason), report["reason"]
    assert report["summary"].startswith(f"smoke FAIL: {reason}")


def test_one_gpu_has_no_bandwidth_to_measure_and_needs_no_bn_sync():
    report = verdict([gpu_rank(0, bn_synchronized=False, bus_bandwidth_mbps=None, allreduce_seconds=None)])
    assert report["verdict"] == "PASS"
    assert "all-reduce n/a (1 rank)" in report["summary"]


def test_loss_fell_compares_the_first_and_last_tenth():
    assert loss_fell([0.0] * 5 + [-0.1] * 5)
    assert not loss_fell([-0.5, 0.1, 0.2, 0.3, 0.4, 0.3, 0.2, 0.1, 0.0, -0.4])
    assert not loss_fell([0.0])
