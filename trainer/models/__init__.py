"""Models by name (Model.name in the config), one registry for pretraining and the linear probe.

`build_model(config.model)` looks the name up; other modules add entries with `@register(name)`.
Pretraining names: simsiam_<backbone>_pretrain for every backbone in BACKBONES.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from paddle import nn

from trainer.config import ConfigError
from trainer.models.resnet import BACKBONES, build_backbone
from trainer.models.simsiam import SimSiam
from trainer.sections import Model

MODELS: dict[str, Callable[..., nn.Layer]] = {}


def register(name: str):
    def add(factory):
        MODELS[name] = factory
        return factory
    return add


def build_model(model: Model | Mapping) -> nn.Layer:
    """The model the config's Model view names (or a Model section as a mapping, as tests and
    benches write one); the keys the file gives are the factory's arguments."""
    if not isinstance(model, Model):
        model = Model.of(model)
    name = model.name
    if name not in MODELS:
        _load_optional_registrations()
    if name not in MODELS:
        import difflib
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(MODELS))})"
        raise ConfigError(f"bad value for 'Model.name': {name!r}{hint}")
    try:
        return MODELS[name](**model.factory_arguments())
    except TypeError as e:        # a key the schema allows but this model does not take
        raise ConfigError(f"bad Model section for {name!r}: {e}") from None


def _load_optional_registrations() -> None:
    """The linear-probe models live in their own module, which registers them on import."""
    try:
        import trainer.models.linear_probe  # noqa: F401
    except ImportError:
        pass


def _simsiam_factory(backbone: str):
    def build(dim: int = 2048, pred_dim: int = 512, width: int = 64, zero_init_residual: bool = True):
        return SimSiam(build_backbone(backbone, zero_init_residual=zero_init_residual, width=width),
                       dim=dim, pred_dim=pred_dim)
    return build


for _backbone in BACKBONES:
    register(f"simsiam_{_backbone}_pretrain")(_simsiam_factory(_backbone))

__all__ = ["MODELS", "register", "build_model", "build_backbone", "SimSiam", "BACKBONES"]
