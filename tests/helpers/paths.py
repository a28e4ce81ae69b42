"""Where things are: the repository, the venv's commands, the small CPU config."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CPU_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_cpu.yaml"
