"""The ImageFolder's file index: the same list as a scan, kept current, never trusted when stale or
corrupt, and kept in the output directory when the data folder is read-only."""
import json
import logging
import os
import subprocess
import sys
import time
import zlib

import pytest
from helpers.paths import REPO
from helpers.prereqs import unavailable

from trainer.data import ImageFolder, build_train_loader, index

FLIP_ONLY = [{"RandomHorizontalFlip": None}, {"ToTensor": None}]


def age(root, seconds=60):
    """Date every folder back: freshly written folders are too recent to be indexed (their mtime
    could still change within the same tick), as they would be when a dataset was copied a while ago."""
    past = time.time() - seconds
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        os.utime(folder, (past, past))


@pytest.fixture
def tree(tmp_path, write_folder):
    """An aged ImageFolder with odd names: non-ASCII, a name that is not UTF-8, spaces, a file that
    is no image, a hidden folder that is no class."""
    root = write_folder(tmp_path / "train", {"b_dog": 3, "a_cat": 2, "c élan": 2})
    (root / "a_cat" / "notes.txt").write_text("not an image")
    (root / "a_cat" / "with space.JPG").write_bytes((root / "a_cat" / "0000.jpg").read_bytes())
    os.link(os.fsencode(root / "b_dog" / "0000.jpg"), os.fsencode(root / "b_dog") + b"/latin1-\xe9.jpg")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.jpg").write_bytes(b"")
    age(root)
    return root


def scanned(root):
    """What ImageFolder lists without any index."""
    listing = index.scan(root)
    paths = [os.path.join(root, c, name)
             for c, files in zip(listing.classes, listing.files, strict=True) for name in files]
    return listing.classes, paths


def same_as_scan(dataset):
    classes, paths = scanned(dataset.root)
    assert dataset.classes == classes and dataset.paths == paths
    assert dataset.labels.tolist() == [classes.index(os.path.basename(os.path.dirname(p))) for p in paths]


def test_the_index_gives_the_same_file_list_as_a_scan(tree, caplog):
    caplog.set_level(logging.INFO, logger="trainer.data")
    first = ImageFolder(tree)
    assert (tree / index.IN_ROOT).is_file() and "file list kept in" in caplog.text
    caplog.clear()
    second = ImageFolder(tree)
    assert "read from" in caplog.text
    same_as_scan(first)
    same_as_scan(second)
    assert len(second) == 9 and (os.fsencode(tree / "b_dog") + b"/latin1-\xe9.jpg"
                                 in map(os.fsencode, second.paths))
    assert not any(".hidden" in p or p.endswith(".txt") for p in second.paths)


@pytest.mark.parametrize("change", ["add a file", "remove a file", "rename a file", "add a class",
                                    "remove a class", "rename a class"])
def test_a_changed_folder_makes_the_index_stale(tree, write_folder, change, caplog):
    ImageFolder(tree)
    assert (tree / index.IN_ROOT).is_file()
    if change == "add a file":
        write_folder(tree, {"b_dog": 4})         # writes 0000..0003: one new file
    elif change == "remove a file":
        (tree / "b_dog" / "0001.jpg").unlink()
    elif change == "rename a file":
        (tree / "c élan" / "0000.jpg").rename(tree / "c élan" / "zzz.jpg")
    elif change == "add a class":
        write_folder(tree, {"d_eel": 1})
    elif change == "remove a class":
        for f in (tree / "c élan").iterdir():
            f.unlink()
        (tree / "c élan").rmdir()
    else:
        (tree / "b_dog").rename(tree / "e_dog")
    caplog.set_level(logging.INFO, logger="trainer.data")
    same_as_scan(ImageFolder(tree))
    assert "scanned" in caplog.text


def test_a_folder_changed_moments_ago_is_not_indexed(tmp_path, write_folder):
    """Its mtime could still change within the same tick without showing; the next start scans."""
    root = write_folder(tmp_path / "fresh", {"a": 2, "b": 2})
    ImageFolder(root)
    assert not (root / index.IN_ROOT).exists()


def rewrite_index(root, make):
    path = root / index.IN_ROOT
    path.write_bytes(make(path.read_bytes()))


def forged(data):
    """A well-formed index that claims one file more than it lists."""
    listing = index.decode(data)
    listing.files[0] = listing.files[0][:-1]
    payload = index.encode(listing)
    head, _, names = zlib.decompress(payload[len(index.MAGIC):]).partition(b"\n")
    header = json.loads(head)
    header["classes"][0][2] += 1
    return index.MAGIC + zlib.compress(json.dumps(header).encode() + b"\n" + names)


@pytest.mark.parametrize("make", [
    lambda data: data[: len(data) // 2],                                      # truncated
    lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],            # a flipped byte
    lambda data: b"garbage" * 10,
    lambda data: b"",
    lambda data: data.replace(b"index 1", b"index 9"),                       # another format
    forged,
], ids=["truncated", "flipped-byte", "garbage", "empty", "other-version", "wrong-count"])
def test_a_corrupt_index_is_rebuilt_not_trusted(tree, make, caplog):
    ImageFolder(tree)
    rewrite_index(tree, make)
    dataset = ImageFolder(tree)
    same_as_scan(dataset)
    assert index.decode((tree / index.IN_ROOT).read_bytes()).classes == dataset.classes   # rewritten whole


def test_only_the_writer_rank_writes_the_index(tree):
    section = {"dataset": {"name": "ImageFolder", "root": str(tree), "transform": FLIP_ONLY},
               "sampler": {"batch_size": 1}, "loader": {"num_workers": 0}}
    build_train_loader(section, rank=1, world_size=2, seed=0)
    assert not (tree / index.IN_ROOT).exists()
    build_train_loader(section, rank=0, world_size=2, seed=0)
    assert (tree / index.IN_ROOT).is_file()


LOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from trainer.data import ImageFolder
dataset = ImageFolder(sys.argv[1], index_dir=sys.argv[2])
print(len(dataset), dataset.classes)
"""


def load_read_only(root, index_dir):
    """ImageFolder in a process that cannot write `root`: as root (whom permissions do not stop)
    in a mount namespace of its own where `root` is mounted read-only, as a read-only data volume
    is; otherwise with the folder's write permission removed."""
    command = [sys.executable, "-c", LOAD, str(root), str(index_dir)]
    if os.geteuid() == 0:
        mount_ro = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", mount_ro, "sh", str(root), *command]
    root.chmod(0o555)
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        root.chmod(0o755)
    if result.returncode == 99:
        unavailable(f"cannot mount {root} read-only in a mount namespace: {result.stderr.strip()}")
    return result


def test_a_read_only_data_folder_keeps_its_index_in_the_output_directory(tmp_path, write_folder):
    root = write_folder(tmp_path / "data", {"a": 2, "b": 3})
    age(root)
    out = tmp_path / "out"
    out.mkdir()
    first = load_read_only(root, out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[0] == "5" and "file list kept in" in first.stderr
    assert not (root / index.IN_ROOT).exists()
    [kept] = out.iterdir()
    assert kept == index.fallback_path(root, out)
    second = load_read_only(root, out)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert f"read from {kept}" in second.stderr
