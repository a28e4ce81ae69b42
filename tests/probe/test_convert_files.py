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
    torch.save({"arch": "resnet18",
                "state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}},
               tmp_path / "lincls.pth.tar")
    convert("torch-lincls", tmp_path / "lincls.pth.tar", tmp_path / "out" / "probe.pdparams")
    assert mode(tmp_path / "out" / "probe.pdparams") == 0o644
    # no temporaries left
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("output, message", [("out-is-a-dir", "Is a directory"),
                                             ("/proc/nope/x.pth", "No such file or directory")])
def test_an_output_that_cannot_be_written_is_one_line(torch, tmp_path, output, message):
    encoder = build_backbone("resnet18")
    encoder.fc = paddle.nn.Identity()
    paddle.save(encoder.state_dict(), str(tmp_path / "encoder.pdparams"))
    (tmp_path / "out-is-a-dir").mkdir()
    target = tmp_path / output   # an absolute output replaces tmp_path
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "convert", "to-torch",
                           str(tmp_path / "encoder.pdparams"), str(target)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"simsiam-train: error: cannot write {target}: {message}"
