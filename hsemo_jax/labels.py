"""Label orders, names and missing-label codes: the one place for each (spec §3.2, §6, §7).

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

The models output the HSE order; AffectNet builds store ``label`` in the HSE order too (and
``expression`` as AffectNet codes), ABAW builders and files keep the Aff-Wild2 order of the
annotation files. ``HSE_TO_AFFWILD`` maps model
scores to Aff-Wild2 columns (Other <- Contempt), as HSEmotion does for ABAW; ``affwild_expr_index``
maps labels named in any of these orders to Aff-Wild2 classes by the same rule.
"""
from __future__ import annotations

import numpy as np

# HSEmotion's class order: alphabetical ImageFolder order (spec §7).
HSE_CLASSES_8 = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
HSE_CLASSES_7 = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
# AffectNet raw expression codes 0..7 = the original DDAMFN repository's order.
AFFECTNET_CODES_8 = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
# The 8-class orders a converted model's outputs can be named in (`convert --class-order`).
CLASS_ORDERS = {"hse": HSE_CLASSES_8, "affectnet": AFFECTNET_CODES_8}
# Aff-Wild2 / ABAW EXPR order (spec §7).
AFFWILD_EXPR_8 = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
VA_NAMES = ("valence", "arousal")


def expression_count(outputs) -> int:
    """How many of a model's outputs are expression scores: all but a trailing valence, arousal."""
    return len(outputs) - (2 if tuple(outputs[-2:]) == VA_NAMES else 0)


# The 12 ABAW action units, in the order of the annotation files.
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")

# AffectNet raw expression code (0..7) -> HSE class index.
AFFECTNET_CODE_TO_HSE = np.array([HSE_CLASSES_8.index(n) for n in AFFECTNET_CODES_8], np.int64)
HSE_TO_AFFECTNET_CODE = np.argsort(AFFECTNET_CODE_TO_HSE)
# `affwild_scores = hse_scores[..., HSE_TO_AFFWILD]` (HSEmotion's AFFECTNET2MTL).
HSE_TO_AFFWILD = np.array([5, 0, 2, 3, 4, 6, 7, 1], np.int64)
AFFWILD_TO_HSE = np.argsort(HSE_TO_AFFWILD)  # HSEmotion's AFFECTNET2AFFWILD
# The HSE / AffectNet class name that fills each Aff-Wild2 EXPR column (Other <- Contempt).
AFFWILD_FROM_HSE_NAMES = tuple("Contempt" if n == "Other" else n for n in AFFWILD_EXPR_8)


def affwild_expr_index(names) -> np.ndarray | None:
    """Class names of an 8-class expression label (any of the orders above) -> the Aff-Wild2 EXPR
    index of each class (Contempt -> Other); None unless the names are those 8 classes."""
    index = {n.lower(): i for i, n in enumerate(AFFWILD_EXPR_8)}
    index.update({n.lower(): i for i, n in enumerate(AFFWILD_FROM_HSE_NAMES)})
    out = [index.get(str(n).lower()) for n in names]
    if None in out or sorted(out) != list(range(len(AFFWILD_EXPR_8))):
        return None
    return np.asarray(out, np.int64)

# Missing-label codes of the ABAW annotation files (spec §3.2): a VA row is valid iff valence and
# arousal are > -5, an EXPR label iff > -1, an AU row iff all 12 labels are >= 0.
MISSING_VA = -5.0
MISSING_EXPR = -1
MISSING_AU = -1

# Compound expressions (C-EXPR, spec §4.5): display names, the submission header's names, and each
# class as a pair of HSE 8-class indices whose probabilities are combined.
CEXPR_CLASSES = ("Fear Surprise", "Happy Surprise", "Sad Surprise", "Disgust Surprise", "Angry Surprise",
                 "Sad Fear", "Sad Angry")
CEXPR_SUBMISSION_NAMES = ("Fearfully_Surprised", "Happily_Surprised", "Sadly_Surprised", "Disgustedly_Surprised",
                          "Angrily_Surprised", "Sadly_Fearful", "Sadly_Angry")
# Fear+Surprise, Happiness+Surprise, Sadness+Surprise, Disgust+Surprise, Anger+Surprise, Sadness+Fear, Sadness+Anger
CEXPR_PAIRS = np.array([[3, 7], [4, 7], [6, 7], [2, 7], [0, 7], [6, 3], [6, 0]], dtype=np.int32)

# Emotional-reaction intensity targets (spec seed_extras §1.1), in the order of the label files.
HUME_REACTION_7 = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise")
HUME_VIDMIMIC_6 = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")
INTENSITY_TARGET_SETS = {"reaction7": HUME_REACTION_7, "vidmimic6": HUME_VIDMIMIC_6}

assert [HSE_CLASSES_8[i] for i in HSE_TO_AFFWILD] == [n if n != "Other" else "Contempt" for n in AFFWILD_EXPR_8]
