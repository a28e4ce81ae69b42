"""simsiam-train's manners with bad input: exit 2, one line on stderr, no traceback."""
import pytest

from trainer_helpers import REPO, run_cli

RECIPE = str(REPO / "trainer/configs/simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml")


@pytest.mark.parametrize("args,message", [
    (["-c", RECIPE, "-o", "Optimizer.momentun=0.9"],
     "unknown key 'Optimizer.momentun' (did you mean 'Optimizer.momentum'?)"),
    (["-c", RECIPE, "-o", "Global.device=tpu"], "bad value for 'Global.device'"),
    (["-c", "no/such/file.yaml"], "config file not found: no/such/file.yaml"),
    (["-o", "Global.epochs=1"], "the following arguments are required: -c/--config"),
    (["-c", RECIPE, "-o", "Global.device=cpu", "-o", "Model.name=simsiam_resnet51_pretrain"],
     "bad value for 'Model.name': 'simsiam_resnet51_pretrain' (did you mean 'simsiam_resnet50_pretrain'?)"),
    (["-c", RECIPE, "-o", "Global.device=cpu", "-o", "Model.name=simsiam_resnet18_pretrain",
      "-o", "Global.checkpoint=/nonexistent/epoch_001_step_00000004.pdckpt",
      "-o", "DataLoader.Train.dataset.root=/nonexistent/train"],
     "Global.checkpoint: checkpoint /nonexistent/epoch_001_step_00000004.pdckpt does not exist"),
    (["-c", RECIPE, "-o", "Global.device=cpu", "-o", "DataLoader.Train.dataset.root=/nonexistent/train"],
     "/nonexistent/train does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_cli([*args, "-o", f"Global.output_dir={tmp_path}"] if "-c" in args else args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
