"""The typed views of a validated config (trainer.sections): built from every shipped and PASSL
config, frozen, naming only keys the schema knows, and leaving the written config.yaml alone."""
import dataclasses
from pathlib import Path

import pytest

from trainer import config, sections
from trainer.config import dump, load_config, shipped_config
from trainer.config_schema import SCHEMA, _param_group

CONFIGS = sorted(config.SHIPPED_CONFIGS_DIR.glob("*.yaml")) + sorted(
    (Path(__file__).parents[1] / "passl").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_has_views_and_its_document_is_unchanged(path):
    cfg = load_config(path)
    written = dump(cfg)
    view = sections.Config.of(cfg)
    assert view.model.name == cfg["Model"]["name"] and view.global_.epochs == cfg["Global"]["epochs"]
    assert dump(cfg) == written
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.model.name = "another"  # type: ignore[misc]


def _schema_keys(*path: str) -> set[str]:
    section = SCHEMA
    for key in path:
        section = section.keys[key]
    return set(section.keys)


# A view's field that no schema key spells would silently keep its default.
@pytest.mark.parametrize("view, path", [
    (sections.Global, ("Global",)),
    (sections.GradScaler, ("FP16", "GradScaler")),
    (sections.Model, ("Model",)),
    (sections.Optimizer, ("Optimizer",)),
    (sections.LRScheduler, ("LRScheduler",)),
    (sections.ParamGroup, ()),                      # an entry of the list Optimizer.param_groups
    (sections.Sampler, ("DataLoader", "Train", "sampler")),
    (sections.Workers, ("DataLoader", "Train", "loader")),
    (sections.Dataset, ("DataLoader", "Train", "dataset")),
], ids=lambda v: getattr(v, "__name__", ""))
def test_view_fields_are_schema_keys(view, path):
    keys = set(_param_group.keys) if view is sections.ParamGroup else _schema_keys(*path)
    assert {f.name for f in dataclasses.fields(view)} <= keys


def test_sparse_sections_read_the_defaults_the_trainer_uses():
    cfg = load_config(shipped_config("simsiam_cifar_resnet18_cpu"), ["Model.width=8"])
    view = sections.Config.of(cfg)
    assert view.model.factory_arguments() == {k: v for k, v in cfg["Model"].items() if k != "name"}
    assert view.fp16 == sections.Fp16(level=cfg["FP16"]["level"], dtype=cfg["FP16"]["dtype"])
    optimizer = sections.Optimizer.of({"name": "LARS"})
    assert (optimizer.momentum, optimizer.weight_decay, optimizer.lr, optimizer.param_groups) == (
        0.9, 0.0, None, ())
    split = sections.DataSplit.of({"dataset": {"name": "ImageFolder", "image_root": "/data"},
                                   "sampler": {"batch_size": 4}})
    assert (split.dataset.root, split.loader.num_workers, split.loader.prefetch_factor) == ("/data", 0, 2)
