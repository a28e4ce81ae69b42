"""The PASSL-schema config parser: shipped recipes load, overrides apply, bad input gets one clear line."""
import pytest
import yaml

from trainer import config
from trainer.config import ConfigError, load_config, shipped_config

RECIPE = "simsiam_resnet50_pt_in1k_1n8c_dp_fp32"


def test_imagenet_recipe_is_the_papers():
    cfg = load_config(shipped_config(RECIPE))
    train = cfg["DataLoader"]["Train"]
    assert cfg["Model"]["name"] == "simsiam_resnet50_pretrain"
    assert train["sampler"]["batch_size"] * 8 == 512
    opt = cfg["Optimizer"]
    assert (opt["name"], opt["momentum"], opt["weight_decay"]) == ("Momentum", 0.9, 1e-4)
    assert opt["lr"]["learning_rate"] == pytest.approx(0.05 * 512 / 256)
    assert opt["param_groups"][1] == {"name": "predictor", "lr": 0.1}
    assert cfg["Global"]["epochs"] == 100
    view = train["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform1"]
    crop = view[0]["RandomResizedCrop"]
    assert crop == {"size": 224, "scale": [0.2, 1.0], "interpolation": "bicubic"}


@pytest.mark.parametrize("path", sorted(config.SHIPPED_CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert load_config(path)["Model"]["name"]


def test_overrides_parse_as_yaml(tmp_path):
    cfg = load_config(shipped_config(RECIPE), [
        "Global.device=cpu", "DataLoader.Train.sampler.batch_size=2",
        "DataLoader.Train.dataset.root=/data/a:b", "Global.epochs=3",
        "DataLoader.Train.dataset.transform.0.TwoViewsTransform.base_transform1.0"
        ".RandomResizedCrop.scale=[0.5, 1]",
        "Global.checkpoint=null",
    ])
    assert cfg["Global"]["device"] == "cpu"
    assert cfg["DataLoader"]["Train"]["sampler"]["batch_size"] == 2
    assert cfg["DataLoader"]["Train"]["dataset"]["root"] == "/data/a:b"
    crop = cfg["DataLoader"]["Train"]["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform1"][0]
    assert crop["RandomResizedCrop"]["scale"] == [0.5, 1.0]
    assert cfg["Global"]["checkpoint"] is None


def test_dump_round_trips(tmp_path):
    cfg = load_config(shipped_config(RECIPE), ["Global.epochs=7"])
    path = tmp_path / "c.yaml"
    path.write_text(config.dump(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override,message", [
    ("Optimizer.momentun=0.9", "unknown key 'Optimizer.momentun' (did you mean 'Optimizer.momentum'?)"),
    ("DataLoader.Train.sampler.batchsize=2",
     "unknown key 'DataLoader.Train.sampler.batchsize' "
     "(did you mean 'DataLoader.Train.sampler.batch_size'?)"),
    ("Gloabl.epochs=1", "unknown key 'Gloabl' (did you mean 'Global'?)"),
    ("Global.device=tpu", "bad value for 'Global.device': 'tpu' (expected one of: gpu, cpu)"),
    ("Global.epochs=0", "bad value for 'Global.epochs': 0 (expected an integer in [1, 1000000])"),
    ("Global.epochs=ten", "bad value for 'Global.epochs': 'ten' (expected an integer in [1, 1000000])"),
    ("Optimizer.momentum=1.5", "bad value for 'Optimizer.momentum': 1.5 (expected a number in [0, 1])"),
    ("FP16.level=O3", "bad value for 'FP16.level': 'O3' (expected one of: O0, O1, O2)"),
    ("Global.epochs", "bad override 'Global.epochs' (expected Dotted.Key=VALUE)"),
    ("DataLoader.Train.dataset.transform.5.X=1", "'DataLoader.Train.dataset.transform.5' is not an index"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(shipped_config(RECIPE), [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_transform_op_suggests_the_closest(tmp_path):
    raw = yaml.safe_load(shipped_config(RECIPE).read_text())
    view = raw["DataLoader"]["Train"]["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform2"]
    view[2] = {"RandomGreyscale": {"p": 0.2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"unknown op 'RandomGreyscale' .*did you mean 'RandomGrayscale'"):
        load_config(path)


def test_passl_keys_we_do_not_use_are_accepted(tmp_path):
    raw = yaml.safe_load(shipped_config(RECIPE).read_text())
    raw["Global"].update(train_loop="X", validate_loop="Y", image_shape=[3, 224, 224])
    raw["DistributedStrategy"]["sharding"] = {"sharding_stage": 1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path)["Global"]["train_loop"] == "X"


LINEAR_PROBE = """
Global: {task_type: Classification, epochs: 90, output_dir: ./out, device: cpu}
Model: {name: simsiam_resnet50_linearprobe, class_num: 1000}
Loss:
  Train: [{CELoss: {weight: 1.0}}]
  Eval: [{CELoss: {weight: 1.0}}]
LRScheduler: {name: TimmCosine, learning_rate: 0.02, decay_unit: epoch, eta_min: 0.0}
Optimizer: {name: MomentumLARC, momentum: 0.9, weight_decay: 0.0, trust_coefficient: 0.001, clip: False}
Metric:
  Train: [{TopkAcc: {topk: [1, 5]}}]
  Eval: [{TopkAcc: {topk: [1, 5]}}]
Export: {export_type: paddle, input_shape: [None, 3, 224, 224]}
DataLoader:
  Train:
    dataset:
      name: ImageFolder
      root: ./train
      transform: [{RandomResizedCrop: {size: 224}}, RandomHorizontalFlip, ToTensor]
    sampler: {name: DistributedBatchSampler, batch_size: 512, drop_last: True, shuffle: True}
  Eval:
    dataset:
      name: ImageFolder
      root: ./val
      transform: [{Resize: {size: 256}}, {CenterCrop: {size: 224}}, ToTensor]
    sampler: {name: DistributedBatchSampler, batch_size: 256, drop_last: False, shuffle: False}
"""


def test_linear_probe_sections_are_part_of_the_schema(tmp_path):
    path = tmp_path / "lp.yaml"
    path.write_text(LINEAR_PROBE)
    cfg = load_config(path)
    assert cfg["Optimizer"]["trust_coefficient"] == 0.001
    assert cfg["DataLoader"]["Eval"]["dataset"]["transform"][1] == {"CenterCrop": {"size": 224}}
    assert cfg["Export"]["input_shape"] == [None, 3, 224, 224]   # PASSL's `None` batch dimension


@pytest.mark.parametrize("text,message", [
    ("Global: [1, 2\n", "cannot parse"),
    ("- a\n- b\n", "is not a YAML mapping"),
    ("Global: {}\n", "missing required section 'Model'"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_module_does_not_import_paddle():
    import subprocess
    import sys
    code = "import sys, trainer.config; assert 'paddle' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- PASSL's files as PASSL writes them ------------------------------------------------------

PASSL = config.SHIPPED_CONFIGS_DIR.parents[1] / "tests" / "passl"


def test_passl_formatted_pretrain_config_loads_with_its_numbers():
    """PASSL writes `weight_decay: 1e-4`; PyYAML reads that as the string '1e-4'."""
    assert yaml.safe_load((PASSL / "pretrain.yaml").read_text())["Optimizer"]["weight_decay"] == "1e-4"
    cfg = load_config(PASSL / "pretrain.yaml")
    assert cfg["Optimizer"]["weight_decay"] == 1e-4
    assert cfg["Model"]["name"] == "simsiam_resnet50_pretrain"
    blur = cfg["DataLoader"]["Train"]["dataset"]["transform"][0]["TwoViewsTransform"]["base_transform1"][3]
    assert blur == {"SimCLRGaussianBlur": {"p": 0.5, "sigma": [0.1, 2.0]}}


def test_passl_formatted_linear_probe_config_loads_with_its_numbers():
    cfg = load_config(PASSL / "linear_probe.yaml")
    assert cfg["Optimizer"]["trust_coefficient"] == 1e-3
    assert cfg["LRScheduler"]["learning_rate"] == 1.6
    assert cfg["Export"]["input_shape"] == [None, 3, 224, 224]


@pytest.mark.parametrize("override,key,expected", [
    ("Optimizer.weight_decay=1e-4", ("Optimizer", "weight_decay"), 1e-4),
    ("Optimizer.lr.learning_rate=5E-2", ("Optimizer", "lr", "learning_rate"), 0.05),
    ("Optimizer.momentum='0.9'", ("Optimizer", "momentum"), 0.9),
    ("Global.epochs='12'", ("Global", "epochs"), 12),
    ("Global.seed=+3", ("Global", "seed"), 3),
])
def test_numbers_written_as_text_become_numbers(override, key, expected):
    cfg = load_config(shipped_config(RECIPE), [override])
    value = cfg
    for part in key:
        value = value[part]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override", [
    "Global.epochs=1e2", "Global.epochs=12.5", "Optimizer.weight_decay=1e-4x", "Optimizer.momentum=0.9.1",
    "Global.epochs=99999999999999999999999",
])
def test_text_that_is_not_the_number_wanted_is_refused(override):
    with pytest.raises(ConfigError, match="bad value for"):
        load_config(shipped_config(RECIPE), [override])


@pytest.mark.parametrize("key", [
    "Optimizer.lr.learning_rate", "Optimizer.weight_decay", "Optimizer.momentum",
    "Optimizer.lr.eta_min", "Optimizer.param_groups.1.lr", "Global.save_interval_minutes",
    "FP16.GradScaler.init_loss_scaling",
])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "1e999", "nan", "inf"])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(shipped_config(RECIPE), [f"{key}={value}"])
    assert f"bad value for '{key}'" in str(err.value) and "number" in str(err.value)


def test_passl_1x_config_gets_one_line_naming_the_format_we_read(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("epochs: 200\noutput_dir: output_dir\nmodel:\n  name: SimSiam\n"
                    "  backbone: {name: ResNet, depth: 18}\n"
                    "lr_scheduler: {name: CosineAnnealingDecay, learning_rate: 0.05, T_max: 200}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "PASSL 1.x" in message and "PASSL 2.x" in message and "\n" not in message


def test_unknown_model_name_is_a_config_error_with_the_closest_name():
    with pytest.raises(ConfigError, match=r"bad value for 'Model.name': 'simsiam_resnet05_pretrain' "
                                          r"\(did you mean 'simsiam_resnet50_pretrain'\?\)"):
        load_config(shipped_config(RECIPE), ["Model.name=simsiam_resnet05_pretrain"])


def test_model_names_the_schema_knows_are_the_models_that_exist():
    """The paddle-free list in trainer/config.py and the registry in trainer/models must agree."""
    from trainer.models import MODELS, _load_optional_registrations

    _load_optional_registrations()
    assert set(config.MODEL_NAMES) == set(MODELS)


# ---- configs cannot hang us -----------------------------------------------------------------

def alias_bomb(levels=9):
    """A "billion laughs" file: a valid config whose free-form Infer section (PASSL, unused) holds
    aliases nesting 10 deep per level, 10**levels strings once expanded."""
    lines = ["Infer:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return shipped_config(RECIPE).read_text() + "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,message", [
    (alias_bomb(), "YAML aliases expand it beyond"),
    ("Global: &g {epochs: 1, seed: *g}\n", "recursive alias"),
    ("Model: &m [1, *m]\n", "recursive alias"),
    ("Global: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("Global: {seed: 2024-13-45}\n", "cannot parse"),
    ("Global:\n  epochs: 100\n  seed: 1\n  epochs: 1\n",
     "key 'epochs' appears twice in one mapping (line 4)"),
    ("Global: {seed: !!python/object:os.system x}\n", "cannot parse"),
])
def test_hostile_yaml_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_small_alias_use_is_fine(tmp_path):
    raw = yaml.safe_load(shipped_config(RECIPE).read_text())
    text = yaml.safe_dump(raw).replace("Normalize:\n", "Normalize: &norm\n", 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path) == load_config(shipped_config(RECIPE))


def test_files_beyond_the_size_limit_and_special_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(shipped_config(RECIPE).read_text() + "#" * config.MAX_YAML_BYTES)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(big)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config("/dev/zero")


def test_an_override_value_gets_the_same_budget():
    laughs = "[" + ", ".join(["&x [&y [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" + ", *y" * 30 + "]"]
                             + ["*x"] * 200) + "]"
    with pytest.raises(ConfigError, match="YAML aliases expand it beyond"):
        load_config(shipped_config(RECIPE), [f"Global.image_shape={laughs}"])
