"""Names -> architectures and published models (input size, normalization, class order, URL),
and names -> face detectors.

An *architecture* is a network layout (`tf_efficientnet_b0`, `mobilefacenet`, `ddamfn`, ...).
A *published model* is an architecture with trained weights released by HSEmotion
(`enet_b0_8_va_mtl`, `mbf_va_mtl`, ...), fetched by name.
A *detector* is a face-detection network whose weights ship with the package
(`hsemo_jax/models/weights/`, loaded by `hsemo_jax.convert.blazeface.load_blazeface(name)`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hsemo_jax import labels
from hsemo_jax.errors import InputError

if TYPE_CHECKING:  # the tables here are read without importing JAX (`hsemo-jax predict --help`)
    from flax import nnx

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
# The emotion backbones (tiny_cnn is a test architecture of the training path).
BACKBONES = tuple(name for name, a in ARCHS.items() if a.family != "tiny")


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
    # Git blob id of the published file (sha1(b"blob <size>\0" + content), as `git ls-tree` lists
    # it); every download and every file placed in the cache is checked against it. None: nothing
    # pinned, the file is used unverified with a warning.
    git_blob: str | None

    def url(self, name: str) -> str:
        return URL_TEMPLATE.format(name=name)


# HSEmotion's released PyTorch models (whole pickled timm / mobilefacenet modules). The blob ids are
# those of models/affectnet_emotions/<name>.pt in github.com/av-savchenko/face-emotion-recognition
# (formerly HSE-asavchenko) at commit 207ed4981625d1f643e25b4a3014e2eed20a0b46 (2024-12-18). No
# SHA-256 is pinned: the files could not be downloaded where these pins were made, and git names a
# file by its blob id, a hash of its whole content, so that is what is verified.
PUBLISHED: dict[str, Published] = {
    "enet_b0_8_best_afew": Published("tf_efficientnet_b0", 8, "9540c8beff661f1c2fca16de63b530cce24bb17d"),
    "enet_b0_8_best_vgaf": Published("tf_efficientnet_b0", 8, "7219cfb037209b253ea8b81cf969e60a00e9181c"),
    "enet_b0_8_va_mtl": Published("tf_efficientnet_b0", 10, "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"),
    "enet_b0_7": Published("tf_efficientnet_b0", 7, "47b748b42622ae1489a389588e9526d44ab01009"),
    "enet_b2_8": Published("tf_efficientnet_b2", 8, "eed81e6368877e89f8a99cfabadae7c3ddc3a949"),
    "enet_b2_8_best": Published("tf_efficientnet_b2", 8, "43be51786607c44fd13df41a497056c6accf7188"),
    "enet_b2_7": Published("tf_efficientnet_b2", 7, "5a8ccbb17913461296003be726a22b6fc40d602b"),
    "mbf_va_mtl": Published("mobilefacenet", 10, "522bdabca7c655a7abde9cfca17e3dfcceadf9a0"),
    "mobilevit_va_mtl": Published("mobilevitv2_150", 10, "d648cb1a20a5b1ab0af64192ec9be39e5cdd3961"),
}


@dataclass(frozen=True)
class Detector:
    family: str  # blazeface
    variant: str  # the family's model (models.blazeface.VARIANTS: input size, anchors, weights file)


# MediaPipe's BlazeFace face detectors (Apache-2.0 weights bundled in hsemo_jax/models/weights/).
DETECTORS: dict[str, Detector] = {
    "blazeface": Detector("blazeface", "short_range"),  # faces within ~2 m of the camera
    "blazeface_full_range": Detector("blazeface", "full_range"),  # within ~5 m; smaller faces
}
# predict's detector: on whole 360p/720p frames the full-range model finds frontal faces from about half
# the size the short-range one needs (~70 vs ~120 px wide at 720p) and more of HSEmotion's MTCNN faces
# (`hsemo-jax bench predict`, README)
DEFAULT_DETECTOR = "blazeface_full_range"


def get_detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise InputError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


@dataclass(frozen=True)
class PublishedFile:
    """A file other than a model (detector weights) fetched by name, checked against its SHA-256."""

    url: str
    sha256: str


# facenet-pytorch's MTCNN weights: state dicts of its PNet, RNet, ONet (legacy torch.save format), in
# data/ of github.com/timesler/facenet-pytorch; pinned to the SHA-256 of the same files in its PyPI
# wheel facenet_pytorch-2.6.0 (facenet_pytorch/data/). `hsemo_jax.hub.fetch_file` caches them under
# downloads/<name>.
_FACENET_DATA = "https://github.com/timesler/facenet-pytorch/raw/master/data/"
PUBLISHED_FILES: dict[str, PublishedFile] = {
    "mtcnn/pnet.pt": PublishedFile(_FACENET_DATA + "pnet.pt",
                                   "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "mtcnn/rnet.pt": PublishedFile(_FACENET_DATA + "rnet.pt",
                                   "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "mtcnn/onet.pt": PublishedFile(_FACENET_DATA + "onet.pt",
                                   "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
