"""Class orders and label conventions of the datasets (spec §6, §7).

Three 8-class expression orders are in use:

    index  HSE (models)  AffectNet code  Aff-Wild2 EXPR
    0      Anger         Neutral         Neutral
    1      Contempt      Happiness       Anger
    2      Disgust       Sadness         Disgust
    3      Fear          Surprise        Fear
    4      Happiness     Fear            Happiness
    5      Neutral       Disgust         Sadness
    6      Sadness       Anger           Surprise
    7      Surprise      Contempt        Other

AffectNet builders store labels in the HSE order (what the models output); ABAW builders keep
the Aff-Wild2 order of the annotation files. ``HSE_TO_AFFWILD`` maps model scores to Aff-Wild2
columns (Other <- Contempt), as HSEmotion does for ABAW.
"""
from __future__ import annotations

import numpy as np

from hsemo_jax.models.registry import AFFECTNET_CODES_8, HSE_CLASSES_8

AFFWILD_EXPR_8 = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")

# AffectNet raw expression code (0..7) -> HSE class index.
AFFECTNET_CODE_TO_HSE = np.array([HSE_CLASSES_8.index(n) for n in AFFECTNET_CODES_8], np.int64)
HSE_TO_AFFECTNET_CODE = np.argsort(AFFECTNET_CODE_TO_HSE)
# `affwild_scores = hse_scores[..., HSE_TO_AFFWILD]` (HSEmotion's AFFECTNET2MTL).
HSE_TO_AFFWILD = np.array([5, 0, 2, 3, 4, 6, 7, 1], np.int64)
AFFWILD_TO_HSE = np.argsort(HSE_TO_AFFWILD)  # HSEmotion's AFFECTNET2AFFWILD

# Missing-label codes of the ABAW annotation files.
MISSING_VA = -5.0
MISSING_EXPR = -1
MISSING_AU = -1

# Folder names accepted for the AffectNet folder-per-class layout -> HSE index.
# Digits are AffectNet codes (the DDAMFN layout); names are HSE's ImageFolder folders.
_ALIASES = {"happy": "Happiness", "sad": "Sadness", "angry": "Anger", "surprised": "Surprise",
            "fearful": "Fear", "disgusted": "Disgust"}


def affectnet_folder_label(folder: str) -> int | None:
    """HSE class index of an AffectNet class folder ("0".."7", "Anger", "happy", ...), else None."""
    if folder.isdigit():
        code = int(folder)
        return int(AFFECTNET_CODE_TO_HSE[code]) if 0 <= code < 8 else None
    key = folder.lower()
    name = _ALIASES.get(key) or next((c for c in HSE_CLASSES_8 if c.lower() == key), None)
    return HSE_CLASSES_8.index(name) if name else None


assert [HSE_CLASSES_8[i] for i in HSE_TO_AFFWILD] == [
    n if n != "Other" else "Contempt" for n in AFFWILD_EXPR_8]
