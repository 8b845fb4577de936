"""Tiny dataset fixtures in EXACTLY the official on-disk layouts, one builder per datamodule.

``build_dataset_fixture("datamodules.CUB200DataModule", tmp_path)`` writes a few classes x a few images in the
real layout (real metadata formats: CUB's id tables, Stanford Cars' ``.mat`` structs written with
``scipy.io.savemat``, Flowers-102's ``imagelabels.mat``/``setid.mat``, the pickled CIFAR batches, ...)
and returns
the ``init_args`` overrides the datamodule needs (``{"root": ...}`` plus, for the generic image folder, what
makes the fixture's class count valid). Fixed-class datasets keep their official ``num_classes`` (CUB: 200);
the fixture holds fewer classes whose labels are valid indices.

Pixels come from the real CIFAR-10 photographs in ``../shared/data/cifar10-mini.zip`` when that archive exists
(read with ``zipfile``, never copied into the repository), else from seeded synthetic images.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_MINI_ZIP = SHARED_DATA / "cifar10-mini.zip"


# ---------------------------------------------------------------------------------------------- pixels
@lru_cache(maxsize=1)
def _zip_members() -> dict[str, list[str]]:
    """``{cifar class: [member names]}`` of the mini archive, or ``{}`` when it is absent."""
    if not CIFAR_MINI_ZIP.is_file():
        return {}
    members: dict[str, list[str]] = {}
    with zipfile.ZipFile(CIFAR_MINI_ZIP) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if name.lower().endswith(".jpg") and len(parts) >= 2:
                members.setdefault(parts[-2], []).append(name)
    return members


@lru_cache(maxsize=1)
def _all_member_bytes() -> dict[str, bytes]:
    """Every JPEG of the mini archive, read once per process (2 MB)."""
    with zipfile.ZipFile(CIFAR_MINI_ZIP) as zf:
        return {name: zf.read(name) for name in zf.namelist() if name.lower().endswith(".jpg")}


def fixture_image(label: int, index: int, size: int = 32) -> Image.Image:
    """An RGB image for class ``label``: a real CIFAR-10 photo when available, else a seeded synthetic one."""
    members = _zip_members()
    if members:
        classes = sorted(members)
        names = members[classes[label % len(classes)]]
        data = _all_member_bytes()[names[(index + label // len(classes) * 7) % len(names)]]
        image = Image.open(io.BytesIO(data)).convert("RGB")
    else:
        rng = np.random.default_rng(1000 * label + index)
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-40, 40, size=(32, 32, 3))
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BILINEAR)


def write_jpeg(path: Path, label: int, index: int, size: int = 32) -> Path:
    """Write :func:`fixture_image` as a JPEG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fixture_image(label, index, size).save(path, format="JPEG", quality=90)
    return path


def _pixels(labels: list[int], offset: int) -> np.ndarray:
    """``(N, 3072)`` uint8 rows in CIFAR's channel-major order."""
    rows = [
        np.asarray(fixture_image(lbl, offset + i)).transpose(2, 0, 1).reshape(-1)
        for i, lbl in enumerate(labels)
    ]
    return np.stack(rows).astype(np.uint8)


def _pickle(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# ---------------------------------------------------------------------------------------------- builders
def build_digits(root: Path) -> dict[str, Any]:
    """Digits ship with scikit-learn: nothing to write."""
    return {"root": str(root)}


def build_image_folder(root: Path, num_classes: int = 3, per_class: int = 8) -> dict[str, Any]:
    """``root/images/<class>/*.jpg`` (one folder per class), for ``split: ratio``."""
    names = ["alpha", "beta", "gamma", "delta", "epsilon"][:num_classes]
    for label, name in enumerate(names):
        for i in range(per_class):
            write_jpeg(root / "images" / name / f"{i:04d}.jpg", label, i)
    return {"root": str(root / "images"), "split": "ratio", "num_classes": None}


def build_image_folder_presplit(root: Path, num_classes: int = 3) -> dict[str, Any]:
    """``root/presplit/{train,val,test}/<class>/*.jpg``, for ``split: folders``."""
    names = ["alpha", "beta", "gamma", "delta", "epsilon"][:num_classes]
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for label, name in enumerate(names):
            for i in range(count):
                write_jpeg(root / "presplit" / split / name / f"{split}_{i:04d}.jpg", label, i)
    return {"root": str(root / "presplit"), "split": "folders", "num_classes": None}


def build_cifar10(root: Path, per_batch: int = 4, test_size: int = 6) -> dict[str, Any]:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (pickled dicts)."""
    base = root / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for b in range(1, 6):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _pickle(
            base / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": _pixels(labels, b * per_batch),
                "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
            },
        )
    labels = [i % 10 for i in range(test_size)]
    _pickle(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": _pixels(labels, 100),
            "filenames": [f"t_{i}.png" for i in labels],
        },
    )
    _pickle(base / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    return {"root": str(root)}


def build_cifar100(root: Path, train_size: int = 20, test_size: int = 6) -> dict[str, Any]:
    """``root/cifar-100-python/{train, test, meta}`` (pickled dicts with fine and coarse labels)."""
    base = root / "cifar-100-python"
    for split, n, offset in (("train", train_size, 0), ("test", test_size, 50)):
        fine = [(7 * i) % 100 for i in range(n)]
        _pickle(
            base / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(n)],
                "batch_label": f"{split} batch",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _pixels(fine, offset),
            },
        )
    _pickle(
        base / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return {"root": str(root)}


# the official tree has 200 wnids (the datamodule refuses any other count): three real ones, with their
# words.txt names, then synthetic ids; images only for a few classes would be refused, so every class gets
# `per_class` training images (64 px JPEGs, as in the archive) and the first `val_classes` get val images
TINY_WNIDS = ["n01443537", "n01629819", "n01641577"] + [f"n{90000000 + i:08d}" for i in range(197)]


def build_tiny_imagenet(
    root: Path, per_class: int = 1, val_per_class: int = 2, val_classes: int = 3
) -> dict[str, Any]:
    """``root/tiny-imagenet-200/`` with wnids.txt, words.txt, train/<wnid>/images, val/images +
    annotations."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in TINY_WNIDS))
    (base / "words.txt").write_text(
        "n00001740\tentity\nn01443537\tgoldfish, Carassius auratus\n"
        "n01629819\tEuropean fire salamander, Salamandra salamandra\nn01641577\tbullfrog, Rana catesbeiana\n"
    )
    for label, wnid in enumerate(TINY_WNIDS):
        boxes = []
        for i in range(per_class):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label, i, size=64)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines = []
    for k in range(val_per_class * val_classes):
        label = k % val_classes
        write_jpeg(base / "val" / "images" / f"val_{k}.JPEG", label, 50 + k, size=64)
        lines.append(f"val_{k}.JPEG\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    write_jpeg(base / "test" / "images" / "test_0.JPEG", 0, 99, size=64)
    return {"root": str(base)}


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def build_cub200(root: Path, per_class: int = 4) -> dict[str, Any]:
    """``root/CUB_200_2011/`` with images.txt, image_class_labels.txt, train_test_split.txt, classes.txt."""
    base = root / "CUB_200_2011"
    base.mkdir(parents=True, exist_ok=True)
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for label, cls in enumerate(CUB_CLASSES):
        species = cls.split(".", 1)[1]
        for i in range(per_class):
            image_id += 1
            rel = f"{cls}/{species}_{i:04d}_{100000 + image_id}.jpg"
            write_jpeg(base / "images" / rel, label, i)
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {label + 1}\n")
            split.append(f"{image_id} {1 if i % 2 == 0 else 0}\n")
            boxes.append(f"{image_id} 1.0 1.0 30.0 30.0\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "train_test_split.txt").write_text("".join(split))
    (base / "bounding_boxes.txt").write_text("".join(boxes))
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CUB_CLASSES)))
    return {"root": str(base)}


CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _cars_struct(labels: list[int]) -> np.ndarray:
    """A ``1 x N`` MATLAB struct array with the fields of ``cars_*_annos.mat``."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rec = np.empty((1, len(labels)), dtype=[(f, "O") for f in fields])
    for i, label in enumerate(labels):
        rec[0, i] = (
            np.array([[1]], np.uint8),
            np.array([[2]], np.uint8),
            np.array([[30]], np.uint8),
            np.array([[31]], np.uint8),
            np.array([[label + 1]], np.uint8),
            np.array([f"{i + 1:05d}.jpg"]),
        )
    return rec


def build_stanford_cars(root: Path, per_class_train: int = 2, per_class_test: int = 2) -> dict[str, Any]:
    """``root/stanford_cars/`` with devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_test_annos_withlabels.mat, cars_train/, cars_test/ (as torchvision's StanfordCars reads it)."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = CARS_CLASSES[i] if i < len(CARS_CLASSES) else f"Car Model {i + 1}"
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    for split, per_class, mat in (
        ("train", per_class_train, base / "devkit" / "cars_train_annos.mat"),
        ("test", per_class_test, base / "cars_test_annos_withlabels.mat"),
    ):
        labels = [lbl for lbl in range(len(CARS_CLASSES)) for _ in range(per_class)]
        for i, label in enumerate(labels):
            write_jpeg(
                base / f"cars_{split}" / f"{i + 1:05d}.jpg", label, i + (0 if split == "train" else 20)
            )
        savemat(mat, {"annotations": _cars_struct(labels)})
    return {"root": str(root)}


AIRCRAFT = [
    ("707-320", "Boeing 707", "Boeing"),
    ("727-200", "Boeing 727", "Boeing"),
    ("A300B4", "A300", "Airbus"),
]


def build_fgvc_aircraft(root: Path, trainval_per_class: int = 3, test_per_class: int = 2) -> dict[str, Any]:
    """``root/fgvc-aircraft-2013b/data/`` with variants/families/manufacturers.txt, images_*_{split}.txt."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v, _, _ in AIRCRAFT))
    (data / "families.txt").write_text("".join(f"{f}\n" for f in dict.fromkeys(f for _, f, _ in AIRCRAFT)))
    (data / "manufacturers.txt").write_text(
        "".join(f"{m}\n" for m in dict.fromkeys(m for _, _, m in AIRCRAFT))
    )
    image_id = 1000000
    rows: dict[str, list[tuple[str, int]]] = {"trainval": [], "test": [], "train": [], "val": []}
    for label in range(len(AIRCRAFT)):
        for i in range(trainval_per_class + test_per_class):
            image_id += 1
            write_jpeg(data / "images" / f"{image_id}.jpg", label, i)
            split = "trainval" if i < trainval_per_class else "test"
            rows[split].append((str(image_id), label))
            if split == "trainval":
                rows["train" if i % 2 == 0 else "val"].append((str(image_id), label))
    for level, column in (("variant", 0), ("family", 1), ("manufacturer", 2)):
        for split, entries in rows.items():
            (data / f"images_{level}_{split}.txt").write_text(
                "".join(f"{iid} {AIRCRAFT[label][column]}\n" for iid, label in entries)
            )
    return {"root": str(root / "fgvc-aircraft-2013b")}


def build_flowers102(root: Path, per_class: int = 4) -> dict[str, Any]:
    """``root/flowers-102/`` with jpg/image_XXXXX.jpg, imagelabels.mat (labels) and setid.mat
    (trnid/valid/tstid)."""
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = [label for label in (0, 1, 2) for _ in range(per_class)]
    for i, label in enumerate(labels):
        write_jpeg(base / "jpg" / f"image_{i + 1:05d}.jpg", label, i)
    savemat(base / "imagelabels.mat", {"labels": np.array([[lbl + 1 for lbl in labels]], dtype=np.uint8)})
    ids = np.arange(1, len(labels) + 1)
    kind = ids % per_class  # per class: 1 train, 1 val, the rest test (the official split is 10 / 10 / rest)
    savemat(
        base / "setid.mat",
        {
            "trnid": ids[kind == 1][None, :].astype(np.uint16),
            "valid": ids[kind == 2][None, :].astype(np.uint16),
            "tstid": ids[(kind != 1) & (kind != 2)][None, :].astype(np.uint16),
        },
    )
    return {"root": str(root)}


def build_flowers5(root: Path, per_class: int = 10) -> dict[str, Any]:
    """``root/flower_photos/{daisy,dandelion,roses,sunflowers,tulips}/*.jpg`` plus LICENSE.txt."""
    base = root / "flower_photos"
    for label, cls in enumerate(["daisy", "dandelion", "roses", "sunflowers", "tulips"]):
        for i in range(per_class):
            write_jpeg(base / cls / f"{1000 + i}_{label}.jpg", label, i)
    (base / "LICENSE.txt").write_text(
        "All images in this archive are licensed under the Creative Commons By-Attribution License.\n"
    )
    return {"root": str(root)}


IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]


def build_imagenet(root: Path, train_per_class: int = 3, val_per_class: int = 2) -> dict[str, Any]:
    """``root/imagenet/{train,val}/<wnid>/*.JPEG`` with the first three ILSVRC-2012 wnids."""
    base = root / "imagenet"
    k = 0
    for label, wnid in enumerate(IMAGENET_WNIDS):
        for i in range(train_per_class):
            write_jpeg(base / "train" / wnid / f"{wnid}_{i}.JPEG", label, i)
        for _ in range(val_per_class):
            k += 1
            write_jpeg(base / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", label, 50 + k)
    return {"root": str(base)}


FIXTURE_BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "datamodules.DigitsDataModule": build_digits,
    "datamodules.ImageFolderDataModule": build_image_folder,
    "datamodules.CIFAR10DataModule": build_cifar10,
    "datamodules.CIFAR100DataModule": build_cifar100,
    "datamodules.TinyImageNetDataModule": build_tiny_imagenet,
    "datamodules.CUB200DataModule": build_cub200,
    "datamodules.StanfordCarsDataModule": build_stanford_cars,
    "datamodules.FGVCAircraftDataModule": build_fgvc_aircraft,
    "datamodules.Flowers102DataModule": build_flowers102,
    "datamodules.Flowers5DataModule": build_flowers5,
    "datamodules.ImageNetDataModule": build_imagenet,
}


def build_dataset_fixture(class_path: str, root: Path) -> dict[str, Any]:
    """Build a tiny fixture for the datamodule ``class_path`` under ``root``; return its init_args overrides.

    Args:
        class_path: e.g. ``"datamodules.CUB200DataModule"`` or ``"datamodules.cub.CUB200DataModule"``.
        root: an empty (or not yet existing) folder to build under.

    Returns:
        The ``init_args`` overrides (at least ``{"root": ...}``).

    Raises:
        KeyError: no builder for that class.
    """
    key = f"datamodules.{class_path.rsplit('.', 1)[-1]}"
    if key not in FIXTURE_BUILDERS:
        raise KeyError(f"no dataset fixture for {class_path!r}; known: {sorted(FIXTURE_BUILDERS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return FIXTURE_BUILDERS[key](root)
