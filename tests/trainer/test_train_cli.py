"""simsiam-train's manners with bad input: exit 2, one line on stderr, no traceback."""
import pytest
from helpers.paths import REPO
from helpers.trainer import run_cli

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
    # the recipe's real ResNet-50 is built before the data root is found missing
    pytest.param(["-c", RECIPE, "-o", "Global.device=cpu",
                  "-o", "DataLoader.Train.dataset.root=/nonexistent/train"],
                 "/nonexistent/train does not exist", marks=pytest.mark.slow),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_cli([*args, "-o", f"Global.output_dir={tmp_path}"] if "-c" in args else args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


PASSL_PRETRAIN = str(REPO / "tests/passl/pretrain.yaml")


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unrecognized argument: --bogus"),
    (["--confg", "x.yaml"], "unrecognized argument: --confg (did you mean --config?)"),
    (["convert", "--bogus"], "unrecognized argument: --bogus"),
    (["-c", RECIPE, "--bogus"], "unrecognized argument: --bogus"),
    (["-c", RECIPE, "-o", "Optimizer.lr.learning_rate=.nan"], "bad value for 'Optimizer.lr.learning_rate'"),
    (["-c", RECIPE, "-o", "Optimizer.weight_decay=.inf"], "expected a finite number"),
])
def test_mistakes_are_named_in_one_line(args, message):
    result = run_cli(args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow  # the recipe's real ResNet-50
def test_passl_formatted_config_runs_as_written(tmp_path):
    """PASSL's own formatting (weight_decay: 1e-4) passes the config checks; the run then stops at
    the data set, the first thing this machine lacks."""
    result = run_cli(["-c", PASSL_PRETRAIN, "-o", "Global.device=cpu", "-o", f"Global.output_dir={tmp_path}",
                      "-o", "DataLoader.Train.dataset.root=/nonexistent/train"])
    assert result.returncode == 2, result.stderr
    assert "/nonexistent/train does not exist" in result.stderr, result.stderr
    assert "bad value" not in result.stderr


def test_alias_bomb_is_refused_at_once(tmp_path):
    """9 levels of 10 aliases: 10**9 strings once expanded, in a section nothing else checks."""
    levels = ["Infer:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text(open(RECIPE).read() + "\n".join(levels) + "\n")
    result = run_cli(["-c", str(path)], timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "YAML aliases expand it beyond" in lines[0], result.stderr


def test_on_kubernetes_the_error_line_becomes_the_pods_termination_message(tmp_path, monkeypatch, capsys):
    """The kubelet provides /dev/termination-log in a container (and `simsiam-job status` shows
    what the trainer wrote there); where the file does not exist, nothing is created."""
    import trainer.cli

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(trainer.cli, "TERMINATION_LOG", str(log))
    assert trainer.cli.main(["-c", str(tmp_path / "missing.yaml")]) == 2
    said = capsys.readouterr().err.strip()
    assert said == f"simsiam-train: error: {log.read_text()}" and "missing.yaml" in said
    log.unlink()
    assert trainer.cli.main(["-c", str(tmp_path / "missing.yaml")]) == 2
    assert not log.exists()
