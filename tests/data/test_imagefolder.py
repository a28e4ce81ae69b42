"""ImageFolder errors, corrupt-file skipping and the max_bad_fraction limit, on real files."""
import logging

import numpy as np
import pytest

from trainer.data import DataError, ImageFolder, build_eval_loader, build_train_loader

FLIP_ONLY = [{"RandomHorizontalFlip": None}, {"ToTensor": None}]


def section(root, batch_size=4, **dataset):
    return {"dataset": {"name": "ImageFolder", "root": str(root), "transform": FLIP_ONLY, **dataset},
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "drop_last": True, "shuffle": True},
            "loader": {"num_workers": 0}}


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as e:
        ImageFolder(tmp_path / "nope")
    assert "does not exist" in one_line(e) and "nope" in one_line(e)


def test_root_without_class_folders(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(DataError) as e:
        ImageFolder(tmp_path)
    assert "no class subfolders" in one_line(e)


def test_class_folder_without_images(write_folder, tmp_path):
    write_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        ImageFolder(tmp_path)
    assert "dog" in one_line(e) and "no images" in one_line(e)


def test_classes_and_labels(write_folder, tmp_path):
    write_folder(tmp_path, {"b_dog": 3, "a_cat": 2})
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["a_cat", "b_dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]


def _with_corrupt_files(write_folder, root, n_good=38):
    write_folder(root, {"a": n_good // 2, "b": n_good - n_good // 2})
    (root / "a" / "garbage.jpg").write_bytes(b"this is not a JPEG at all")
    good = (root / "b" / "0000.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_corrupt_images_skipped_counted_and_reported(write_folder, tmp_path, caplog):
    root = _with_corrupt_files(write_folder, tmp_path)
    loader = build_train_loader(section(root, max_bad_fraction=0.1), rank=0, world_size=1, seed=0)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        batches = list(loader)
    assert len(batches) == 40 // 4 and all(len(labels) == 4 for _, labels in batches)
    assert loader.bad_images == 2
    reported = caplog.text
    assert "garbage.jpg" in reported and "truncated.jpg" in reported


def test_eval_drops_corrupt_images_instead_of_repeating(write_folder, tmp_path):
    root = _with_corrupt_files(write_folder, tmp_path)
    sec = section(root, max_bad_fraction=0.1)
    sec["sampler"].update(shuffle=False, drop_last=False)
    loader = build_eval_loader(sec, rank=0, world_size=1)
    labels = np.concatenate([labels for _, labels in loader])
    assert len(labels) == 38 and loader.bad_images == 2


def test_too_many_corrupt_images_is_an_error(write_folder, tmp_path):
    root = _with_corrupt_files(write_folder, tmp_path)  # 2 bad of 40 = 5%
    loader = build_train_loader(section(root, max_bad_fraction=0.01), rank=0, world_size=1, seed=0)
    with pytest.raises(DataError) as e:
        list(loader)
    assert "max_bad_fraction" in one_line(e)


def test_corrupt_image_in_a_worker_process(write_folder, tmp_path):
    root = _with_corrupt_files(write_folder, tmp_path)
    sec = section(root, max_bad_fraction=0.1)
    sec["loader"]["num_workers"] = 2
    loader = build_train_loader(sec, rank=0, world_size=1, seed=0)
    assert sum(len(labels) for _, labels in loader) == 40 and loader.bad_images == 2
    loader.close()


def test_bad_settings_are_one_line_errors(write_folder, tmp_path):
    write_folder(tmp_path, {"a": 4})
    for change, words in [({"dataset": {"root": str(tmp_path), "name": "Cifar10"}}, "only ImageFolder"),
                          ({"sampler": {"batch_size": 0}}, "batch_size"),
                          ({"sampler": {"batch_size": 8, "drop_last": True}}, "fewer than one global batch"),
                          ({"loader": {"num_workers": -1}}, "num_workers"),
                          ({"dataset": {"name": "ImageFolder"}}, "root is not set")]:
        sec = section(tmp_path)
        for key, value in change.items():
            sec[key] = {**sec[key], **value} if key != "dataset" else value
        with pytest.raises(DataError) as e:
            build_train_loader(sec, rank=0, world_size=1, seed=0)
        assert words in one_line(e)


def test_images_of_different_sizes_need_a_fixed_size_op(write_folder, tmp_path):
    write_folder(tmp_path, {"a": 2}, size=(40, 30))
    write_folder(tmp_path, {"b": 2}, size=(30, 40))
    with pytest.raises(DataError) as e:
        list(build_train_loader(section(tmp_path), rank=0, world_size=1, seed=0))
    assert "RandomResizedCrop" in one_line(e)


def test_grayscale_cmyk_and_alpha_images_become_rgb(tmp_path):
    """ImageNet has grayscale and CMYK JPEGs; folders may hold PNGs with alpha or palettes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(rgb).convert("L").save(folder / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb).save(folder / "plain.bmp")
    sec = section(tmp_path, batch_size=5)
    sec["dataset"]["transform"] = [{"RandomResizedCrop": {"size": 16}}]
    sec["sampler"]["shuffle"] = False
    loader = build_train_loader(sec, rank=0, world_size=1, seed=0)
    (views, labels), = list(loader)
    assert views[0].shape == (5, 3, 16, 16) and loader.bad_images == 0
    gray = views[0][loader.dataset.paths.index(str(folder / "gray.jpg"))]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
