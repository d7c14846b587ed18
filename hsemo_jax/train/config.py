"""Training configuration: TOML or JSON files -> validated dataclasses.

A config file has the sections below (all optional; every field has a default). Unknown
sections or keys, wrong types and out-of-range values raise `InputError` naming the field,
e.g. `pretrain.toml: optim.lr: expected a number > 0, got "fast"`. Command-line
`--set section.key=VALUE` overrides (VALUE parsed as TOML, else taken as a string).
Each field's documentation is the `doc` of its dataclass field (`describe()` prints them all,
`describe(command)` those a command reads).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsemo_jax.errors import InputError


def doc(default, text: str, choices: tuple | None = None, minimum: float | None = None, positive: bool = False):
    """A dataclass field with a documentation string and its allowed values."""
    meta = {"doc": text, "choices": choices, "min": minimum, "positive": positive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    arch: str = doc("tf_efficientnet_b0", "backbone architecture (hsemo_jax.models.registry; tiny_cnn: smoke "
                                          "runs and tests)",
                    ("tf_efficientnet_b0", "efficientnet_b0", "tf_efficientnet_b2", "mobilefacenet", "ddamfn",
                     "tiny_cnn"))
    num_outputs: int = doc(10, "outputs of the classifier: 10 = 8 expression logits + valence + arousal "
                               "(CCC loss on), 8 = expression only", (8, 10))
    init: str = doc("", "hsemo-jax model directory (`hsemo-jax convert`) whose matching weights initialize the "
                        "model, e.g. VGGFace2 face-ID weights; layers of other shapes (the classifier) stay "
                        "random; empty = random init")
    num_heads: int = doc(2, "DDAMFN attention heads", minimum=1)
    seed: int = doc(0, "seed of the random initialization", minimum=0)


@dataclass
class HeadConfig:
    tasks: list = doc(["expr", "va", "au"], "tasks to train, any of expr, va, au")
    mode: str = doc("separate", "separate = each task's sub-head alone on the rows with its label, with its own "
                                "optimizer, epochs and model selection (the paper's way, spec §3.4); joint = "
                                "one run on all rows, masked sum of the task losses", ("separate", "joint"))
    epochs_expr: float = doc(10.0, "separate mode: epochs of the EXPR sub-head (spec: 10; 1 with TRAIN_VAL)",
                             positive=True)
    epochs_va: float = doc(20.0, "separate mode: epochs of the VA sub-head (spec: 20; 10 with TRAIN_VAL)",
                           positive=True)
    epochs_au: float = doc(10.0, "separate mode: epochs of the AU sub-head (spec: 10)", positive=True)
    task_weights: dict = doc({}, "joint mode: loss weight per task, e.g. {expr = 1.0, va = 2.0}; default 1")
    seed: int = doc(0, "seed of the head's glorot-uniform initialization", minimum=0)


@dataclass
class DataConfig:
    train: str = doc("", "training data: pretrain = a TFDS build of `hsemo-jax build-dataset` (DATA_DIR/<name>"
                         "[/<config>] or its version folder, local or gs://; features image + label or expression "
                         "(+ va): hsemo_jax/train/pretrain_data.py); train-head = feature dataset (x (N,D+10), "
                         "expr, va, au with ABAW missing codes; hsemo_jax/train/data.py)")
    train_split: str = doc("train", "pretrain: split of data.train to train on")
    val: str = doc("", "validation data: pretrain = a TFDS build (e.g. the directory of data.train), train-head = "
                       "a feature dataset, distill = a stream file or 'synthetic'; empty = no validation (no "
                       "best-by-metric saves)")
    val_split: str = doc("validation", "pretrain: split of data.val to validate on (AffectNet: its balanced "
                                       "validation set, 500 images per class)")
    augment: str = doc("hsemotion", "pretrain augmentation recipe, on the host (data_pipelines/augment.py): "
                                    "hsemotion = resize only (HSEmotion's AffectNet training), ddamfn = flip, "
                                    "affine p=0.7, random erasing p=0.5, ddamfn++ = erasing p=1 of 5 %",
                       ("hsemotion", "ddamfn", "ddamfn++"))
    sampling: str = doc("shuffle", "pretrain epoch order: shuffle = a permutation per epoch; class_balanced = "
                                   "n draws with replacement, weight 1/class count (DDAMFN's "
                                   "ImbalancedDatasetSampler)", ("shuffle", "class_balanced"))
    workers: int = doc(0, "pretrain: grain worker processes decoding and augmenting per host; 0 = in this "
                          "process with read_threads threads", minimum=0)
    read_threads: int = doc(4, "pretrain: threads per process (and per worker) assembling batches", positive=True)
    prefetch: int = doc(2, "pretrain: batches buffered per process (and per worker)", positive=True)
    synthetic_rows: int = doc(512, "distill: rows of a 'synthetic' stream", positive=True)
    hflip: bool = doc(True, "distill: random horizontal flip (p = 0.5) on the device (pretrain augments on the "
                            "host: data.augment)")


@dataclass
class LossConfig:
    class_weights: str = doc("inverse_frequency", "EXPR cross-entropy class weights: inverse_frequency = "
                                                  "max_count/count over the training rows, none = 1",
                             ("inverse_frequency", "none"))
    ce_normalize: str = doc("weight", "pretrain CE reduction: weight = torch CrossEntropyLoss(weight) weighted "
                                      "mean (AffectNet/DDAMFN recipes), batch = Keras class_weight mean over the "
                                      "batch (the head always uses batch)", ("weight", "batch"))
    label_smoothing: float = doc(0.0, "EXPR label smoothing ε (AffectNet FER-only recipe: 0.1)", minimum=0.0)
    va_weight: float = doc(1.0, "weight of the CCC loss 1 - (CCC_V + CCC_A)/2", minimum=0.0)
    attention_weight: float = doc(0.1, "DDAMFN attention-loss weight (ignored for other architectures)",
                                  minimum=0.0)
    au_weights: str = doc("balanced", "AU BCE weights: balanced = N/(2 neg), N/(2 pos) per AU, none = 1",
                          ("balanced", "none"))
    l2: float = doc(1 / 512, "head: L2 factor on the EXPR and VA kernels (Keras L2(1/512))", minimum=0.0)


@dataclass
class OptimConfig:
    name: str = doc("adam", "adam / adamw (optax, torch semantics) or keras_adam (TF-2.13 Keras Adam)",
                    ("adam", "adamw", "keras_adam"))
    lr: float = doc(1e-4, "peak learning rate", positive=True)
    b1: float = doc(0.9, "Adam beta1 (first-moment decay)", minimum=0.0)
    b2: float = doc(0.999, "Adam beta2 (second-moment decay)", minimum=0.0)
    eps: float = doc(1e-8, "Adam epsilon (Keras: 1e-7, torch/optax: 1e-8)", positive=True)
    weight_decay: float = doc(0.0, "adamw decoupled weight decay", minimum=0.0)
    clip_norm: float = doc(0.0, "clip gradients to this global norm; 0 = off", minimum=0.0)
    schedule: str = doc("constant", "learning-rate schedule", ("constant", "exponential", "cosine", "warmup_cosine"))
    gamma: float = doc(1.0, "exponential: lr factor per epoch (DDAMFN: 0.6)", positive=True)
    warmup_steps: int = doc(0, "warmup_cosine: warmup optimizer updates", minimum=0)
    final_fraction: float = doc(0.0, "cosine schedules: final lr as a fraction of lr", minimum=0.0)
    grad_accum: int = doc(1, "micro-batches per optimizer update (optax.MultiSteps); effective batch = "
                             "batch_size x grad_accum", positive=True)
    lr_scaling: str = doc("none", "scale lr from lr_reference_batch to the effective batch B = batch_size x "
                                  "grad_accum: linear = lr x B/ref, sqrt = lr x sqrt(B/ref) (Adam), none",
                          ("none", "linear", "sqrt"))
    lr_reference_batch: int = doc(256, "the effective batch that optim.lr was tuned for (lr_scaling)", positive=True)
    trainable: str = doc("all", "all = full fine-tuning; classifier = only the last linear layer gets updates "
                                "(AffectNet recipe phase 1; BatchNorm still in train mode)", ("all", "classifier"))


@dataclass
class TrainConfig:
    batch_size: int = doc(48, "the global batch: rows per step over all devices and processes (a multiple of "
                              "the device count; each process loads batch_size / process_count of them); an "
                              "optimizer update sees batch_size x optim.grad_accum rows; head: 512", positive=True)
    epochs: float = doc(6.0, "epochs of pretraining or of the joint head (the separate head mode uses "
                             "head.epochs_*); ignored when steps > 0", positive=True)
    steps: int = doc(0, "total steps (per task in the separate head mode); 0 = from the epochs", minimum=0)
    compute_dtype: str = doc("float32", "forward/backward dtype; bfloat16 keeps fp32 master weights",
                             ("float32", "bfloat16"))
    seed: int = doc(0, "data order and augmentation seed", minimum=0)
    eval_every: int = doc(0, "evaluate every this many steps; 0 = once per epoch", minimum=0)
    eval_batch: int = doc(0, "evaluation batch; 0 = batch_size", minimum=0)
    log_every: int = doc(10, "fetch metrics and write CSV rows every this many steps", positive=True)
    tensorboard: bool = doc(True, "also write a TensorBoard event file (no TensorFlow needed)")
    progress: bool = doc(True, "progress line on stderr")


@dataclass
class CheckpointConfig:
    save_every: int = doc(500, "save the train state every this many steps (and at the end); 0 = only at the end",
                          minimum=0)
    keep: int = doc(3, "newest checkpoints kept in RUN/checkpoints/latest", positive=True)
    keep_best: int = doc(1, "best checkpoints kept in RUN/checkpoints/best", positive=True)
    best_metric: str = doc("accuracy", "validation metric that ranks checkpoints (pretrain: accuracy, macro_f1, "
                                       "CCC_V, CCC_A, loss; joint head: P_MTL, P_EXPR, P_VA, P_AU, loss, ...)")
    best_mode: str = doc("max", "max or min of best_metric", ("max", "min"))
    async_save: bool = doc(True, "write checkpoints in the background")


@dataclass
class DistributedConfig:
    initialize: bool = doc(False, "call jax.distributed.initialize() (multi-host); on TPU VMs and SLURM the "
                                  "other fields can stay empty")
    coordinator_address: str = doc("", "host:port of process 0")
    num_processes: int = doc(0, "number of processes; 0 = auto", minimum=0)
    process_id: int = doc(-1, "this process's index; -1 = auto", minimum=-1)


@dataclass
class DistillConfig:
    stage: str = doc("both", "hsemo-jax distill: both = train the teacher then the student in RUN/teacher, "
                             "RUN/student; teacher or student = only that stage (student needs a finished teacher, "
                             "see teacher_dir)", ("both", "teacher", "student"))
    teacher_arch: str = doc("ddamfn", "teacher backbone (hsemo_jax.models.registry, or tiny_cnn for smoke tests)")
    student_arch: str = doc("mobilefacenet", "student backbone (hsemo_jax.models.registry, or tiny_cnn)")
    teacher_init: str = doc("", "hsemo-jax model directory whose matching weights initialize the teacher backbone; "
                                "empty = random init")
    student_init: str = doc("", "hsemo-jax model directory whose matching weights initialize the student backbone; "
                                "empty = random init")
    teacher_seed: int = doc(0, "seed of the teacher's random initialization", minimum=0)
    student_seed: int = doc(1, "seed of the student's random initialization", minimum=0)
    num_heads: int = doc(2, "DDAMFN attention heads (teacher or student)", minimum=1)
    teacher_dir: str = doc("", "stage = student: a finished teacher (the RUN/teacher directory of a distill run, "
                               "holding model.npz + model.json); empty = RUN/teacher")
    num_expr: int = doc(7, "EXPR classes (spec 2.1: 7, Neutral Anger Disgust Fear Happiness Sadness Surprise)",
                        (7, 8))
    va_bins: int = doc(20, "bins per VA dimension (spec: 20); the VA head has 2 x va_bins logits", minimum=2)
    hidden: int = doc(128, "hidden width of each head: BN -> Linear(D, hidden) -> ReLU -> BN -> Dropout -> "
                           "Linear(hidden, n)", positive=True)
    dropout: float = doc(0.5, "head dropout rate", minimum=0.0)
    temperature: float = doc(1.5, "distillation temperature T: KD = T^2 KL(softmax(t/T) || softmax(s/T))",
                             positive=True)
    lambda_teacher: float = doc(0.4, "weight of KD where a label exists: (1 - lambda) L_sup + lambda KD",
                                minimum=0.0)
    lambda_ccc: float = doc(1.0, "weight of 1 - CCC in the VA loss (per dimension, next to the bin CE)",
                            minimum=0.0)
    disable_shared_annotations: bool = doc(False, "true = no cross-task labels: EXPR rows get no VA label and VA "
                                                  "rows no EXPR label (the paper's 'no sharing')")
    expr: str = doc("", "EXPR stream: image dataset (.npz or .npy directory: images uint8 (N,S,S,3), expr (N,), "
                        "optional va (N,2), video (N,), frame (N,); -2 = missing) or 'synthetic'")
    va: str = doc("", "VA stream (same format, va required) or 'synthetic'")
    expr_va: str = doc("shared", "EXPR_VA stream (both labels): a dataset, 'synthetic', 'shared' = the frames "
                                 "in both the EXPR and the VA stream (matched on video, frame), or '' = none")
    shared_every: int = doc(3, "'shared' EXPR_VA stream: keep every k-th matched frame (spec: 3)", positive=True)
    image_size: int = doc(0, "tiny_cnn and 'synthetic' data: image side; 0 = the student architecture's input",
                          minimum=0)


@dataclass
class Config:
    run_dir: str = doc("", "output directory: checkpoints/, metrics.csv, tensorboard/, model/ (CLI --out)")
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)
            if f.default_factory is not dataclasses.MISSING}

# The fields each training command reads (a name covers a section or one field): `describe(command)`
# lists these and no other.
_OPTIM = tuple(f"optim.{f.name}" for f in dataclasses.fields(OptimConfig) if f.name != "trainable")
_COMMON = ("run_dir", "train", "checkpoint", "distributed")
COMMAND_FIELDS = {
    "pretrain": _COMMON + ("model", "data.train", "data.train_split", "data.val", "data.val_split", "data.augment",
                           "data.sampling", "data.workers", "data.read_threads", "data.prefetch", "loss.class_weights",
                           "loss.ce_normalize", "loss.label_smoothing", "loss.va_weight", "loss.attention_weight",
                           "optim"),
    "train-head": _COMMON + ("head", "data.train", "data.val", "loss.class_weights", "loss.label_smoothing",
                             "loss.au_weights", "loss.l2") + _OPTIM,
    "distill": _COMMON + ("distill", "data.val", "data.synthetic_rows", "data.hflip") + _OPTIM,
}


def _check_value(where: str, f: dataclasses.Field, value: Any):
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool,
                                                    "list": list, "dict": dict}[f.type]
    meta = f.metadata
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where}: expected {kind.__name__}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise InputError(f"{where}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if meta.get("positive") and not value > 0:
        raise InputError(f"{where}: expected a number > 0, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise InputError(f"{where}: expected a number >= {meta['min']}, got {value!r}")
    return value


def _build(cls, values: dict, where: str, source: str, overridden: dict | None = None):
    """`cls` from `values`; a bad value is blamed on `source` (the file), or on the `--set` that
    gave it (`overridden`: dotted key -> the override's text)."""
    overridden = overridden or {}
    if not isinstance(values, dict):
        raise InputError(f"{overridden.get(where, source)}: {where}: expected a table of settings, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        src = overridden.get(name, source)
        if key not in fields:
            raise InputError(f"{src}: unknown setting {name!r} (known: {', '.join(fields)})")
        f = fields[key]
        if cls is Config and key in SECTIONS:
            kwargs[key] = _build(type(SECTIONS[key]()), value, key, source, overridden)
        else:
            kwargs[key] = _check_value(f"{src}: {name}", f, value)
    return cls(**kwargs)


def _validate(cfg: Config, source: str, overridden: dict | None = None) -> Config:
    """Checks across fields; an error names the `--set` that gave the field (`overridden`), else `source`."""
    def at(key: str) -> str:
        return f"{(overridden or {}).get(key, source)}: {key}"

    bad = [t for t in cfg.head.tasks if t not in ("expr", "va", "au")]
    if bad or not cfg.head.tasks:
        raise InputError(f"{at('head.tasks')}: expected a non-empty list of expr, va, au, got {cfg.head.tasks!r}")
    for k, v in cfg.head.task_weights.items():
        if k not in ("expr", "va", "au"):
            raise InputError(f"{at('head.task_weights')}: unknown task {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise InputError(f"{at('head.task_weights')}.{k}: expected a number >= 0, got {v!r}")
    if cfg.model.arch == "ddamfn" and cfg.model.num_outputs not in (8, 10):
        raise InputError(f"{at('model.num_outputs')}: DDAMFN needs 8 or 10")
    for name in ("teacher_arch", "student_arch"):
        arch = getattr(cfg.distill, name)
        if arch != "tiny_cnn":
            from hsemo_jax.models.registry import ARCHS

            if arch not in ARCHS:
                names = list(ARCHS) + ([] if "tiny_cnn" in ARCHS else ["tiny_cnn"])
                raise InputError(f"{at('distill.' + name)}: expected one of {', '.join(names)}; got {arch!r}")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-3' -> (['optim', 'lr'], 0.001)."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected section.key=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Config from a .toml / .json file (or defaults when path is None) plus `section.key=VALUE`
    overrides; raises InputError naming the file and field on any bad value."""
    source = str(path) if path else "defaults"
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise InputError(f"{p}: cannot parse the config: {e}") from None
    overridden = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
        overridden[".".join(keys)] = f"--set {text}"
    return _validate(_build(Config, data, "", source, overridden), source, overridden)


def describe(command: str | None = None, defaults: Config | None = None) -> str:
    """Every field with its default and documentation (for `--describe-config`), or only the fields
    `command` reads (`COMMAND_FIELDS`); `defaults`: the command's default config, whose values are
    shown instead of the fields' own defaults."""
    reads = COMMAND_FIELDS[command] if command else None
    defaults = defaults or Config()
    lines = []
    for name, factory in [("", None)] + list(SECTIONS.items()):
        cls = Config if factory is None else type(factory())
        for f in dataclasses.fields(cls):
            if factory is None and f.name in SECTIONS:  # a section, listed field by field below
                continue
            key = f"{name}.{f.name}" if name else f.name
            if reads is not None and not any(key == r or key.startswith(r + ".") for r in reads):
                continue
            choices = f" [{'|'.join(map(str, f.metadata['choices']))}]" if f.metadata.get("choices") else ""
            default = getattr(getattr(defaults, name) if name else defaults, f.name)
            lines.append(f"{key} = {default!r}{choices}\n    {f.metadata.get('doc', '')}")
    return "\n".join(lines)
