"""Files `simsiam-train convert` writes are readable like the trainer's other outputs (0644 under
the usual umask), not private to their writer as a temporary file's 0600 would make them."""
import os
import stat
import subprocess
import sys

import paddle
import pytest

from trainer.models import build_backbone

pytestmark = pytest.mark.torch
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def convert(*args):
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "convert", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    return proc


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_converted_files_are_readable_by_others(torch, tmp_path):
    encoder = build_backbone("resnet18")
    encoder.fc = paddle.nn.Identity()
    paddle.save(encoder.state_dict(), str(tmp_path / "encoder.pdparams"))
    convert("to-torch", tmp_path / "encoder.pdparams", tmp_path / "out" / "resnet18.pth")
    assert mode(tmp_path / "out" / "resnet18.pth") == 0o644

    import torchvision

    classifier = torchvision.models.resnet18(num_classes=10)
    torch.save({"arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}},
               tmp_path / "lincls.pth.tar")
    convert("torch-lincls", tmp_path / "lincls.pth.tar", tmp_path / "out" / "probe.pdparams")
    assert mode(tmp_path / "out" / "probe.pdparams") == 0o644
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []   # no temporaries left
