"""Names -> architectures and published models (input size, normalization, class order, URL).

An *architecture* is a network layout (`tf_efficientnet_b0`, `mobilefacenet`, `ddamfn`, ...).
A *published model* is an architecture with trained weights released by HSEmotion
(`enet_b0_8_va_mtl`, `mbf_va_mtl`, ...), fetched by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from flax import nnx

from hsemo_jax import labels
from hsemo_jax.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Arch:
    family: str  # key family for conversion: efficientnet | mobilefacenet | ddamfn | mobilevit (| tiny)
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int


ARCHS: dict[str, Arch] = {
    "tf_efficientnet_b0": Arch("efficientnet", 224, IMAGENET_MEAN, IMAGENET_STD, 1280),
    "efficientnet_b0": Arch("efficientnet", 224, IMAGENET_MEAN, IMAGENET_STD, 1280),
    "tf_efficientnet_b2": Arch("efficientnet", 260, IMAGENET_MEAN, IMAGENET_STD, 1408),
    "mobilefacenet": Arch("mobilefacenet", 112, HALF, HALF, 512),
    "ddamfn": Arch("ddamfn", 112, IMAGENET_MEAN, IMAGENET_STD, 512),
    "mobilevitv2_150": Arch("mobilevit", 224, IMAGENET_MEAN, IMAGENET_STD, 768),
    # smoke runs and tests of the training path (models/tiny_cnn.py); no published weights
    "tiny_cnn": Arch("tiny", 32, HALF, HALF, 32),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise InputError(f"unknown architecture {name!r}; expected one of {', '.join(ARCHS)}")
    return ARCHS[name]


def build(arch: str, num_classes: int | None, *, num_heads: int = 2, seed: int = 0) -> nnx.Module:
    """A freshly initialized model in eval mode. num_classes None = embedding only (not DDAMFN)."""
    family = get_arch(arch).family
    if family == "efficientnet":
        from hsemo_jax.models.efficientnet import EfficientNet
        model = EfficientNet(arch, num_classes, seed=seed)
    elif family == "mobilefacenet":
        from hsemo_jax.models.mobilefacenet import MobileFaceNet
        model = MobileFaceNet(num_classes, seed=seed)
    elif family == "mobilevit":
        from hsemo_jax.models.mobilevit import MobileViT
        model = MobileViT(arch, num_classes, seed=seed)
    elif family == "tiny":
        from hsemo_jax.models.tiny_cnn import TinyCNN
        model = TinyCNN(num_classes, seed=seed)
    else:
        from hsemo_jax.models.ddamfn import DDAMFN
        model = DDAMFN(num_classes or 8, num_heads, seed=seed)
    model.eval()
    return model


def output_names(num_classes: int | None, class_order: str = "hse") -> tuple[str, ...]:
    """Names of the score columns: 7 or 8 expression logits, then valence and arousal if 10."""
    if not num_classes:
        return ()
    if num_classes == 7:
        return labels.HSE_CLASSES_7
    if num_classes == 8:
        return labels.CLASS_ORDERS[class_order]
    if num_classes == 10:
        return labels.CLASS_ORDERS[class_order] + labels.VA_NAMES
    return tuple(f"score_{i}" for i in range(num_classes))


URL_TEMPLATE = ("https://github.com/HSE-asavchenko/face-emotion-recognition/blob/main/models/"
                "affectnet_emotions/{name}.pt?raw=true")


@dataclass(frozen=True)
class Published:
    arch: str
    num_classes: int

    def url(self, name: str) -> str:
        return URL_TEMPLATE.format(name=name)


# HSEmotion's released PyTorch models (whole pickled timm / mobilefacenet modules).
PUBLISHED: dict[str, Published] = {
    "enet_b0_8_best_afew": Published("tf_efficientnet_b0", 8),
    "enet_b0_8_best_vgaf": Published("tf_efficientnet_b0", 8),
    "enet_b0_8_va_mtl": Published("tf_efficientnet_b0", 10),
    "enet_b0_7": Published("tf_efficientnet_b0", 7),
    "enet_b2_8": Published("tf_efficientnet_b2", 8),
    "enet_b2_8_best": Published("tf_efficientnet_b2", 8),
    "enet_b2_7": Published("tf_efficientnet_b2", 7),
    "mbf_va_mtl": Published("mobilefacenet", 10),
    "mobilevit_va_mtl": Published("mobilevitv2_150", 10),
}
