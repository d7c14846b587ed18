"""AffectNet builder: official CSV layout (face crops) or folder-per-class layout.

Official layout (``manual_dir``)::

    training.csv, validation.csv      (or under Manually_Annotated_file_lists/)
    Manually_Annotated_Images/<subDirectory_filePath>

CSV columns: ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
expression,valence,arousal`` (header optional); landmarks are 68 ``x;y;...`` pairs. As in
HSEmotion (spec §2): the image is read with OpenCV, the face is cropped as
``img[y:y+h, x:x+w]`` (no margin, no clamping) and the crop is re-encoded as JPEG with
OpenCV's defaults (quality 95, what ``cv2.imwrite`` did). Expression codes 8..10 (None,
Uncertain, No-Face) are skipped; codes 0..7 are mapped to the HSE class order (§7).

Folder-per-class layout::

    {train,training}/<class>/*.jpg   and   {val,validation,test}/<class>/*.jpg

with class folders named by AffectNet code ("0".."7", the DDAMFN layout) or by class name
("Anger", "Happiness", ...; HSEmotion's layout). Files are stored as they are (no crop).

Features (per example):
    image          bytes            encoded face crop
    name           text             subDirectory_filePath (or path relative to the split dir)
    label          int64 ClassLabel HSE index 0..7 (Anger, Contempt, ..., Surprise)
    expression     int64 ClassLabel AffectNet code 0..7 (Neutral, Happiness, ..., Contempt)
    va             float32 (2,)     valence, arousal (AffectNet: -2 = not annotated)
    va_mask        bool             both in [-1, 1] (False for the folder layout)
    face_box       int32 (4,)       x, y, w, h in the original image ((0, 0, W, H) for folders)
    landmarks      float32 (68, 2)  x, y relative to the crop's top-left corner
    landmarks_mask bool             landmarks given
Splits: train, validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.annotations import Line, read_lines
from data_pipelines.builder_base import ManualBuilder, bytes_feature, tensor
from data_pipelines.images import IMAGE_SUFFIXES, BadImage, decode_bgr, encode, read_bytes
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AFFECTNET_CODE_TO_HSE, AFFECTNET_CODES_8, HSE_CLASSES_8, HSE_TO_AFFECTNET_CODE

CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
               "facial_landmarks", "expression", "valence", "arousal")
CSV_SPLITS = {"train": "training.csv", "validation": "validation.csv"}
FOLDER_SPLITS = {"train": ("train", "training"), "validation": ("val", "validation", "test")}
NUM_LANDMARKS = 68
EXCLUDED_CODES = {8: "None", 9: "Uncertain", 10: "No-Face"}
# Folder names accepted for the folder-per-class layout besides codes and HSE class names.
FOLDER_ALIASES = {"happy": "Happiness", "sad": "Sadness", "angry": "Anger", "surprised": "Surprise",
                  "fearful": "Fear", "disgusted": "Disgust"}


def folder_label(folder: str) -> int | None:
    """HSE class index of a class folder ("0".."7", "Anger", "happy", ...), else None.
    Digits are AffectNet codes (the DDAMFN layout); names are HSE's ImageFolder folders."""
    if folder.isdigit():
        code = int(folder)
        return int(AFFECTNET_CODE_TO_HSE[code]) if 0 <= code < 8 else None
    key = folder.lower()
    name = FOLDER_ALIASES.get(key) or next((c for c in HSE_CLASSES_8 if c.lower() == key), None)
    return HSE_CLASSES_8.index(name) if name else None


@dataclass(frozen=True)
class CsvRow:
    path: Path
    name: str
    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None  # (68, 2) in image coordinates
    code: int
    va: tuple[float, float]


@dataclass(frozen=True)
class FolderFile:
    path: Path
    name: str
    label: int


def parse_csv_line(line: Line, image_root: Path) -> CsvRow | str:
    """A data line -> CsvRow (image under `image_root`), or a skip reason (excluded code,
    NULL or empty face box); InputError for a malformed line."""
    f = line.fields(len(CSV_COLUMNS))
    name = f[0]
    if not name:
        raise line.error("empty subDirectory_filePath")
    code = line.int(f[6], "expression", range(0, 11))
    valence, arousal = line.float(f[7], "valence"), line.float(f[8], "arousal")
    if code in EXCLUDED_CODES:
        return f"expression code {code} ({EXCLUDED_CODES[code]})"
    if "NULL" in f[1:5]:
        return "face box is NULL"
    x, y, w, h = (line.int(v, col) for v, col in zip(f[1:5], CSV_COLUMNS[1:5]))
    if w <= 0 or h <= 0:
        return "empty face box"
    landmarks = None
    if f[5]:
        values = [line.float(v, "facial_landmarks") for v in f[5].split(";") if v.strip()]
        if len(values) != 2 * NUM_LANDMARKS:
            raise line.error(f"facial_landmarks must have {2 * NUM_LANDMARKS} values, got {len(values)}")
        landmarks = np.asarray(values, np.float32).reshape(NUM_LANDMARKS, 2)
    return CsvRow(image_root / name, name, (x, y, w, h), landmarks, code, (valence, arousal))


def _find_csv(root: Path, filename: str) -> Path | None:
    for d in (root, root / "Manually_Annotated_file_lists"):
        if (d / filename).is_file():
            return d / filename
    return None


def _image_root(root: Path) -> Path:
    for d in (root / "Manually_Annotated_Images", root / "Manually_Annotated" / "Manually_Annotated_Images"):
        if d.is_dir():
            return d
    return root


class Affectnet(ManualBuilder):
    """AffectNet face crops with HSE-ordered labels, valence/arousal and landmarks."""

    name = "affectnet"
    DESCRIPTION = __doc__
    HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point --manual-dir at your AffectNet copy: training.csv + validation.csv + "
        "Manually_Annotated_Images/, or train/ and val/ folders with one folder per class.")

    def _features(self):
        return {
            "image": bytes_feature("encoded face crop (JPEG for the official layout)"),
            "name": tfds.features.Text(doc="subDirectory_filePath or relative file path"),
            "label": tfds.features.ClassLabel(names=HSE_CLASSES_8, doc="HSE class index"),
            "expression": tfds.features.ClassLabel(names=AFFECTNET_CODES_8, doc="AffectNet code"),
            "va": tensor((2,), np.float32, "valence, arousal"),
            "va_mask": tensor((), np.bool_, "valence and arousal both in [-1, 1]"),
            "face_box": tensor((4,), np.int32, "x, y, w, h in the original image"),
            "landmarks": tensor((NUM_LANDMARKS, 2), np.float32, "x, y relative to the crop"),
            "landmarks_mask": tensor((), np.bool_, "landmarks given"),
        }

    def _candidates(self, root: Path) -> dict[str, list]:
        csvs = {split: _find_csv(root, fn) for split, fn in CSV_SPLITS.items()}
        if any(csvs.values()):
            return {split: self._csv_candidates(split, path, _image_root(root))
                    for split, path in csvs.items() if path}
        folders = {}
        for split, dirnames in FOLDER_SPLITS.items():
            d = next((root / n for n in dirnames if (root / n).is_dir()), None)
            if d is not None:
                folders[split] = self._folder_candidates(d)
        if not folders:
            raise InputError(
                f"{root}: not an AffectNet copy: expected training.csv / validation.csv with "
                f"Manually_Annotated_Images/, or train/ and val/ folders with one folder per class")
        return folders

    def _csv_candidates(self, split: str, csv_path: Path, image_root: Path) -> list[CsvRow]:
        rows = []
        for line in read_lines(csv_path):
            if line.lineno == 1 and line.text.startswith(CSV_COLUMNS[0]):
                if tuple(line.fields()) != CSV_COLUMNS:
                    raise line.error(f"unexpected header; expected {','.join(CSV_COLUMNS)}")
                continue
            row = parse_csv_line(line, image_root)
            if isinstance(row, str):
                self.log.skip(split, row, line.fields()[0])
            else:
                rows.append(row)
        return rows

    def _folder_candidates(self, split_dir: Path) -> list[FolderFile]:
        files = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = folder_label(class_dir.name)
            if label is None:
                raise InputError(
                    f"{class_dir}: unknown class folder {class_dir.name!r}; expected AffectNet "
                    f"codes 0..7 or one of {', '.join(HSE_CLASSES_8)}")
            for p in sorted(class_dir.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(FolderFile(p, p.relative_to(split_dir).as_posix(), label))
        return files

    def _load(self, c) -> dict:
        data = read_bytes(c.path, c.name)
        img = decode_bgr(data, c.name)
        landmarks = np.zeros((NUM_LANDMARKS, 2), np.float32)
        if isinstance(c, FolderFile):
            h, w = img.shape[:2]
            return {"image": data, "name": c.name, "label": c.label,
                    "expression": int(HSE_TO_AFFECTNET_CODE[c.label]),
                    "va": np.zeros(2, np.float32), "va_mask": False,
                    "face_box": np.array([0, 0, w, h], np.int32),
                    "landmarks": landmarks, "landmarks_mask": False}
        x, y, w, h = c.box
        crop = img[y:y + h, x:x + w]  # exactly HSEmotion's crop: no margin, no clamping
        if crop.size == 0:
            raise BadImage(f"empty crop (face box {c.box} outside the {img.shape[1]}x{img.shape[0]} image)",
                           c.name)
        if c.landmarks is not None:
            landmarks = c.landmarks - np.array([x, y], np.float32)
        return {"image": encode(crop, ".jpg"), "name": c.name,
                "label": int(AFFECTNET_CODE_TO_HSE[c.code]), "expression": c.code,
                "va": np.array(c.va, np.float32),
                "va_mask": bool(all(-1.0 <= v <= 1.0 for v in c.va)),
                "face_box": np.array(c.box, np.int32),
                "landmarks": landmarks, "landmarks_mask": c.landmarks is not None}
