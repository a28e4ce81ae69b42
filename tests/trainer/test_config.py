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
        "DataLoader.Train.dataset.transform.0.TwoViewsTransform.base_transform1.0.RandomResizedCrop.scale=[0.5, 1]",
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
     "unknown key 'DataLoader.Train.sampler.batchsize' (did you mean 'DataLoader.Train.sampler.batch_size'?)"),
    ("Gloabl.epochs=1", "unknown key 'Gloabl' (did you mean 'Global'?)"),
    ("Global.device=tpu", "bad value for 'Global.device': 'tpu' (expected one of: gpu, cpu)"),
    ("Global.epochs=0", "bad value for 'Global.epochs': 0 (expected an integer >= 1)"),
    ("Global.epochs=ten", "bad value for 'Global.epochs': 'ten' (expected an integer >= 1)"),
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
