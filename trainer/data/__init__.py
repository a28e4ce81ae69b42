"""The data pipeline: ImageFolder, PASSL-named augmentations, distributed batch layout, loader.

See docs/data.md. Paddle is imported only by Loader.to_tensor.
"""
from trainer.data.errors import DataError
from trainer.data.loader import ImageFolder, Loader, build_eval_loader, build_train_loader

__all__ = ["DataError", "ImageFolder", "Loader", "build_eval_loader", "build_train_loader"]
