"""The ImageFolder's file list, scanned once and kept in an index file.

Listing ROOT/<class>/ for ImageNet's 1.28 M files takes every rank minutes on a network
filesystem. So the list is kept in an index, with the modification time of every class folder:
adding, removing or renaming a file changes its folder's mtime, and a new or removed class changes
the listing of ROOT. Checking the index therefore costs one listing of ROOT and one stat per class.
An index that is stale, corrupt, truncated or of another format is rebuilt, never trusted.

Where: ROOT/.simsiam-index when ROOT is writable (a file, not a folder: tools that take every
subfolder of ROOT for a class, torchvision's and paddle's ImageFolder among them, ignore it), else
INDEX_DIR/dataset-<hash of ROOT's path>.index (the run's output directory). Only a writer (rank 0)
writes it, to a temporary name that is then renamed, so a reader sees a whole index or none; ranks
that find no valid index scan the folders themselves, as they would without one.

A folder modified less than RECENT_SECONDS before the index is written could change again within
the same mtime tick (coarse on some filesystems) unnoticed, so such an index is not written; the
next start scans again.

File format: MAGIC, then a zlib stream (its checksum catches corruption) of one JSON header line
{"extensions", "classes": [[name, mtime_ns, count], ...]} and the file names, NUL-separated.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from trainer.data.errors import DataError

log = logging.getLogger("trainer.data")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
MAGIC = b"simsiam-imagefolder-index 1\n"
IN_ROOT = ".simsiam-index"
RECENT_SECONDS = 2.0


@dataclass
class Listing:
    """classes: sorted class folder names; mtimes: each folder's st_mtime_ns, taken before it was
    listed; files: each class's image file names, sorted."""
    classes: list[str]
    mtimes: list[int]
    files: list[list[str]]


def class_folders(root: Path) -> list[str]:
    """Sorted names of ROOT's subfolders, hidden ones excluded."""
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"dataset root {root}: cannot read {e.filename or root}: {e.strerror or e}") from None


def scan(root: Path) -> Listing:
    """List the image files of every class folder."""
    classes = class_folders(root)
    mtimes, files = [], []
    for name in classes:
        folder = root / name
        try:
            mtimes.append(os.stat(folder).st_mtime_ns)      # before listing: a later change shows
            files.append(sorted(e.name for e in os.scandir(folder)
                                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS))
        except OSError as e:
            raise DataError(f"dataset root {root}: cannot read {e.filename or folder}: "
                            f"{e.strerror or e}") from None
    return Listing(classes, mtimes, files)


def fallback_path(root: Path, index_dir: Path) -> Path:
    digest = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(index_dir) / f"dataset-{digest}.index"


def encode(listing: Listing) -> bytes:
    header = {"extensions": sorted(IMAGE_EXTENSIONS),
              "classes": [[c, m, len(f)] for c, m, f in zip(listing.classes, listing.mtimes, listing.files,
                                                               strict=True)]}
    names = "\0".join(name for files in listing.files for name in files)
    return MAGIC + zlib.compress(json.dumps(header).encode() + b"\n"
                                 + names.encode("utf-8", "surrogateescape"), 1)


def decode(data: bytes) -> Listing:
    """The listing an index file holds; ValueError if it is not a whole index of this format."""
    if not data.startswith(MAGIC):
        raise ValueError("not an index of this format")
    try:
        payload = zlib.decompress(data[len(MAGIC):])
    except zlib.error as e:
        raise ValueError(f"corrupt ({e})") from None
    head, _, body = payload.partition(b"\n")
    try:
        header = json.loads(head)
        extensions = header["extensions"]
        classes, mtimes, counts = zip(*header["classes"], strict=True) if header["classes"] else ((), (), ())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt header ({e})") from None
    if extensions != sorted(IMAGE_EXTENSIONS):
        raise ValueError("made for other image extensions")
    names = body.decode("utf-8", "surrogateescape").split("\0") if body else []
    if not all(isinstance(n, int) and n >= 0 for n in counts) or sum(counts) != len(names):
        raise ValueError("the file count does not match the header")
    files, start = [], 0
    for n in counts:
        files.append(names[start:start + n])
        start += n
    return Listing(list(classes), list(mtimes), files)


def current(listing: Listing, root: Path) -> bool:
    """Whether the folders still are as they were when `listing` was made (cheap: no file listing)."""
    if class_folders(root) != listing.classes:
        return False
    for name, mtime in zip(listing.classes, listing.mtimes, strict=True):
        try:
            if os.stat(root / name).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _read(path: Path, root: Path) -> Listing | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None                         # absent or unreadable: not an index we can use
    try:
        listing = decode(data)
    except ValueError as e:
        log.warning("WARNING: file index %s is unusable (%s); scanning %s again", path, e, root)
        return None
    return listing if current(listing, root) else None


def _write(path: Path, listing: Listing) -> bool:
    """Atomically write the index; False when the folder is not writable or changed too recently."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(encode(listing))
            f.flush()
            os.fsync(f.fileno())
            now = os.fstat(f.fileno()).st_mtime_ns     # the filesystem's clock, not this host's
        if max(listing.mtimes, default=0) > now - RECENT_SECONDS * 1e9:
            return False
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load(root: Path, index_dir: Path | None = None, write: bool = True) -> Listing:
    """The file list of ROOT: from a current index, else scanned (and, when `write`, kept in an
    index in ROOT or, when ROOT is not writable, in `index_dir`)."""
    started = time.monotonic()
    places = [root / IN_ROOT] + ([fallback_path(root, index_dir)] if index_dir is not None else [])
    for path in places:
        listing = _read(path, root)
        if listing is not None:
            log.info("dataset %s: file list read from %s in %.1f s", root, path, time.monotonic() - started)
            return listing
    listing = scan(root)
    written = next((path for path in places if write and _write(path, listing)), None)
    log.info("dataset %s: scanned in %.1f s%s", root, time.monotonic() - started,
             f"; file list kept in {written}" if written else "")
    return listing
