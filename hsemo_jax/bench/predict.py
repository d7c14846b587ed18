"""`hsemo-jax bench predict`: end-to-end frames/s and faces found, in one run on the same clips, of

(a) HSEmotion's example pipeline: facenet-pytorch's MTCNN as its examples make it (`keep_all=False,
    post_process=False, min_face_size=40`) on every full frame, faces kept at probability > 0.9 (as
    EmotiEffLib's examples keep them); per face
    the crop, PIL resize, torchvision normalize and one eager PyTorch forward;
(b) `predict(detector="haar")`: the host pipeline (whole-frame Haar search every `DETECT_EVERY`-th
    frame, tracked faces followed between, PIL-exact crops, batched jitted forwards);
(c) `predict` with BlazeFace (short range and full range): the device program, whole-frame detection
    on every frame (`hsemo_jax.predict.device`);

at 360p and 720p, every pipeline once per round, rounds in turn (`--rounds`, default 3: the machine's
speed drifts between runs; the table gives the median frames/s and the median of the per-round speed
ratios). "Recall vs (a)": the share of (a)'s faces that a pipeline also finds, matched per
frame by IoU >= 0.3. The bench also measures how far the device program's crop + resize is from the
PIL-exact host path (`--exact-preprocess`) on the clip's faces: the 224x224 crops of the same boxes
(levels 0-255; independent of the weights) and the largest change of a probability (these weights).

The clips move four real faces (scikit-image's astronaut, in colour and grey, twice, and its cameraman,
grey, in three-quarter view; test dependencies) over a 1280x720 frame, ~65-200 px wide; the 360p
clip is the same frames shrunk. Weights
are random (the same in every pipeline: speed does not depend on them), with batch-norm statistics
recomputed on the scene (`calibrate`) so that the outputs depend on the face.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsemo_jax.predict.defaults import BATCH_SIZE

MIN_IOU = 0.3  # a face of (a) counts as found when a box of the same frame overlaps it this much
MTCNN_MIN_PROB = 0.9  # EmotiEffLib's examples keep MTCNN faces above this probability
MTCNN_MIN_FACE = 40  # px: HSEmotion's and EmotiEffLib's examples (facenet-pytorch's default, 20, searches
# a pyramid level below, ~2x the P-Net work: it made (a) slower than the pipeline it stands for)
GOAL_SPEED, GOAL_RECALL = 5.0, 0.95  # (c) against (a)
VARIANTS = ("blazeface", "blazeface_full_range")
SIZED = "blazeface_full_range"  # the (c) variant `--detect-sizes` runs again
PROBE_FRAMES = 4  # frames on which (a)'s torch thread count is chosen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="tf_efficientnet_b0", help="backbone (default tf_efficientnet_b0)")
    p.add_argument("--frames", type=int, default=40, help="frames per clip (default 40)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[360, 720], metavar="HEIGHT",
                   help="clip heights, 16:9 (default 360 720)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of every pipeline in turn: median frames/s and median per-round speed ratio (default 3)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"predict's batch size (default {BATCH_SIZE}, predict's)")
    p.add_argument("--detect-sizes", type=int, nargs="+", default=[], metavar="PX",
                   help="also run (c) full range with each of these `predict --detect-size` values (default: its own only)")


# (image, crop rows, crop columns, mirrored, grey, x, y (top left at 1280x720), scale): the astronaut
# close (face ~180 px wide, by MTCNN's box), the cameraman (grey, three-quarter view, ~90 px), the
# astronaut in grey (~110 px) and mirrored, farther (~65 px)
SCENE = (("astronaut", (0, 330), (90, 380), False, False, 40, 40, 2.0),
         ("camera", (60, 300), (150, 320), False, True, 820, 100, 1.6),
         ("astronaut", (40, 200), (150, 320), False, True, 1020, 490, 1.25),
         ("astronaut", (20, 260), (130, 330), True, False, 640, 420, 0.75))


def _people():
    from skimage import data

    out = []
    for name, (r0, r1), (c0, c1), mirrored, grey, x, y, s in SCENE:
        img = getattr(data, name)()
        if img.ndim == 3 and grey:
            img = np.round(img[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
        img = img[r0:r1, c0:c1, :3]
        out.append((np.ascontiguousarray(img[:, ::-1] if mirrored else img), x, y, s))
    return out


def render(i: int, people) -> np.ndarray:
    """Frame `i` of the scene, RGB 1280x720: each person moves and grows/shrinks by ~10%."""
    import cv2

    frame = np.empty((720, 1280, 3), np.uint8)
    frame[:] = np.linspace(70, 140, 1280, dtype=np.uint8)[None, :, None]  # a plain wall, lit from the right
    for j, (img, x0, y0, s0) in enumerate(people):
        s = s0 * (1 + 0.1 * np.sin(0.15 * i + 2 * j))
        f = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        x, y = int(x0 + 40 * np.sin(0.1 * i + j)), int(y0 + 20 * np.cos(0.12 * i + j))
        fh, fw = min(f.shape[0], 720 - y), min(f.shape[1], 1280 - x)
        frame[y:y + fh, x:x + fw] = f[:fh, :fw]
    return frame


def make_video(path: Path, n_frames: int, height: int = 720, fps: float = 25.0) -> Path:
    """The scene's first `n_frames` frames at 16:9 `height` (shrunk from 720p) as an mp4 file."""
    import cv2

    size = (round(height * 16 / 9), height)
    people = _people()
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n_frames):
        rgb = render(i, people)
        if size != (1280, 720):
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        vw.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def read_frames(video: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@dataclass
class Result:
    seconds: float
    frames: int
    boxes: list  # per frame, (n, 4) float boxes (x1, y1, x2, y2)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def faces(self) -> int:
        return sum(len(b) for b in self.boxes)


def example_mtcnn():
    """facenet-pytorch's MTCNN with the settings of HSEmotion's examples."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=False, post_process=False, min_face_size=MTCNN_MIN_FACE, device="cpu")


def mtcnn_torch_pipeline(video: Path, ref, size: int, mean, std, mtcnn=None) -> Result:
    """(a): per frame (decoded and converted to RGB as the examples do), facenet-pytorch MTCNN on
    the full frame; per face kept, the crop (`predict.detect.crop`), PIL resize to `size`,
    torchvision normalize and one eager forward of `ref`."""
    import cv2
    import torch
    from PIL import Image
    from torchvision import transforms

    from hsemo_jax.predict.detect import crop

    mtcnn = mtcnn or example_mtcnn()
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    cap = cv2.VideoCapture(str(video))
    found = []
    t0 = time.perf_counter()
    with torch.no_grad():
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes, probs = mtcnn.detect(rgb)
            kept = [] if boxes is None else [b for b, p in zip(boxes, probs) if p > MTCNN_MIN_PROB]
            frame_boxes = []
            for box in kept:
                face = crop(rgb, box)
                if face is not None:
                    ref(tf(Image.fromarray(face))[None])
                    frame_boxes.append(box)
            found.append(np.asarray(frame_boxes, np.float64).reshape(-1, 4))
    seconds = time.perf_counter() - t0
    cap.release()
    return Result(seconds, len(found), found)


def table_boxes(table, n_frames: int) -> list[np.ndarray]:
    """Per frame, the boxes of a `Predictions` table."""
    face = table.has_face
    xyxy = np.stack([table[c] for c in ("x1", "y1", "x2", "y2")], axis=1)
    return [xyxy[face & (table["frame"] == i)] for i in range(n_frames)]


def calibrate(model, ref, arch_name: str) -> None:
    """Batch-norm statistics of the random weights recomputed on the scene's faces and frames
    (`models.recalibrate`), in `model` and the same in the PyTorch `ref`: at initialization the
    outputs are the same for every face, and the resize gap's probability figure would say nothing."""
    import cv2
    import torch

    from hsemo_jax.convert import export_torch_state
    from hsemo_jax.models import registry
    from hsemo_jax.models.recalibrate import recalibrate_batch_norms
    from hsemo_jax.models.transforms import preprocess_images

    arch = registry.get_arch(arch_name)
    people = _people()
    images = [img for img, *_ in people] + [render(i, people) for i in range(0, 40, 10)]
    size = arch.input_size
    x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    recalibrate_batch_norms(model, [preprocess_images(x, size, arch.mean, arch.std)])
    state = {k: torch.from_numpy(np.array(v)) for k, v in export_torch_state(model, arch.family).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


def timed_predict(video: Path, model_dir: str, **kw) -> tuple[Result, object]:
    from hsemo_jax.predict import predict

    t0 = time.perf_counter()
    table = predict(str(video), [model_dir], progress=False, **kw)
    seconds = time.perf_counter() - t0
    n = int(table["frame"].max()) + 1
    return Result(seconds, n, table_boxes(table, n)), table


def matched(ref_boxes: list[np.ndarray], boxes: list[np.ndarray], min_iou: float = MIN_IOU) -> int:
    """How many of `ref_boxes`' faces have a box of the same frame in `boxes` with IoU >= min_iou,
    each box matched once (greedily, highest IoU first)."""
    from hsemo_jax.predict.track import iou

    hits = 0
    for a, b in zip(ref_boxes, boxes):
        if not len(a) or not len(b):
            continue
        m = iou(np.asarray(a, np.float64), np.asarray(b, np.float64))
        while m.size and m.max() >= min_iou:
            i, j = np.unravel_index(np.argmax(m), m.shape)
            hits += 1
            m[i, :], m[:, j] = -1, -1
    return hits


def resize_gap(frames: list[np.ndarray], table, model_dir: str, batch_size: int) -> dict:
    """The device program's crops of `table`'s faces against the PIL-exact host crops of the same
    boxes (224x224 or the model's size, levels 0-255): mean and max |difference|; and the largest
    |difference| of a probability between `table` (the device program's) and the host path's
    forward on the exact crops."""
    import jax

    from hsemo_jax.models.transforms import resize_uint8
    from hsemo_jax.predict.detect import crop
    from hsemo_jax.predict.device import crop_boxes, crop_resize
    from hsemo_jax.predict.pipeline import _run_batch, load_models

    models = load_models([model_dir])
    size = models[0].module.info.input_size
    resize = jax.jit(crop_resize, static_argnums=2)
    face = np.flatnonzero(table.has_face)
    diffs, exact, boxes = [], [], []
    for r in face:
        rgb = frames[int(table["frame"][r])]
        box = np.array([table[c][r] for c in ("x1", "y1", "x2", "y2")], np.float32)
        corners, nonempty = crop_boxes(box, *rgb.shape[:2])
        host_crop = crop(rgb, box)
        if not bool(nonempty) or host_crop is None:
            continue
        host = resize_uint8(host_crop, (size, size))
        dev = np.asarray(resize(rgb, corners, size))
        diffs.append(np.abs(dev - host.astype(np.float32)))
        exact.append(host_crop)
        boxes.append(r)
    if not diffs:
        return {"faces": 0}
    probs = []
    for i in range(0, len(exact), batch_size):  # the host path's batches (`--exact-preprocess`)
        p, _, _ = _run_batch(models, np.ones(1), exact[i:i + batch_size], batch_size, True)
        probs.append(p)
    host_p = np.concatenate(probs)
    dev_p = np.stack([table[f"p_{c}"][boxes] for c in table.expression_names], axis=1)
    d = np.stack(diffs)
    return {"faces": len(diffs), "size": size, "mean": float(d.mean()), "max": float(d.max()),
            "dprob": float(np.abs(dev_p - host_p).max())}


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.bench.common import torch_reference
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.convert import convert_state_dict
    from hsemo_jax.models import registry
    from hsemo_jax.predict.defaults import DETECT_EVERY, MIN_DETECT_SIZE

    if args.frames < 1 or args.rounds < 1 or any(h < 32 for h in args.resolutions):
        raise SystemExit("bench predict: --frames and --rounds must be >= 1 and --resolutions heights >= 32")
    if any(s < MIN_DETECT_SIZE for s in args.detect_sizes):
        raise SystemExit(f"bench predict: --detect-sizes must be >= {MIN_DETECT_SIZE} px")
    # (c)'s runs: (row key, detector, detect size)
    device = [(name, name, None) for name in VARIANTS] + [(f"{SIZED}@{s}", SIZED, s) for s in args.detect_sizes]
    arch = registry.get_arch(args.arch)
    ref = torch_reference(args.arch)
    if ref is None:
        raise SystemExit("bench predict needs PyTorch and timm (pip install -e '.[test]')")
    import torch

    torch.set_grad_enabled(False)
    ref.eval()
    mtcnn = example_mtcnn()
    torch_threads = torch.get_num_threads()
    kw = dict(batch_size=args.batch_size)
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = str(tmp / "model")
        model = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, args.arch, 10)
        calibrate(model, ref, args.arch)
        save_model(model, ModelInfo.for_arch(args.arch, 10), model_dir)
        for height in args.resolutions:
            video = make_video(tmp / f"faces{height}p.mp4", args.frames, height)
            warm = make_video(tmp / f"warm{height}p.mp4", min(args.frames, args.batch_size), height)
            probe = make_video(tmp / f"probe{height}p.mp4", min(args.frames, PROBE_FRAMES), height)
            # (a) runs with the faster of torch's thread count and one thread on the first frames (on a
            # loaded machine one thread can be many times faster than two that wait for each other)
            rates = {}
            mtcnn.detect(read_frames(probe)[0])
            ref(torch.zeros(1, 3, arch.input_size, arch.input_size))
            for threads in sorted({torch_threads, 1}):
                torch.set_num_threads(threads)
                r = mtcnn_torch_pipeline(probe, ref, arch.input_size, arch.mean, arch.std, mtcnn)
                rates[threads] = r.fps
            threads = max(rates, key=rates.get)
            torch.set_num_threads(threads)
            _note(f"{height}p (a), {threads} torch thread(s) ({', '.join(f'{t}: {v:.2f}' for t, v in rates.items())} "
                  "frames/s on the first frames)")
            torch.set_num_threads(torch_threads)
            # (b), (c): a warm-up run on the first frames compiles every shape (a long video amortizes it)
            for key, name, size in [("b", "haar", None), *device]:
                _note(f"{height}p warm-up {key}")
                timed_predict(warm, model_dir, detector=name, detect_size=size, **kw)
            runs, tables = {}, {}
            for i in range(args.rounds):  # every pipeline once per round, back to back
                _note(f"{height}p round {i + 1} of {args.rounds}")
                torch.set_num_threads(threads)
                runs.setdefault("a", []).append(mtcnn_torch_pipeline(video, ref, arch.input_size, arch.mean, arch.std,
                                                                     mtcnn))
                torch.set_num_threads(torch_threads)
                for key, name, size in [("b", "haar", None), *device]:
                    result, tables[key] = timed_predict(video, model_dir, detector=name, detect_size=size, **kw)
                    runs.setdefault(key, []).append(result)
            _note(f"{height}p resize gap")
            frames = read_frames(video)
            gap = {name: resize_gap(frames, tables[name], model_dir, args.batch_size) for name in VARIANTS}
            report.append((height, runs, gap, threads, rates))
    _print(args, report, DETECT_EVERY)
    return 0


def _note(text: str) -> None:
    import sys

    print(f"bench predict: {text}", file=sys.stderr, flush=True)


def _label(key: str, detect_every: int, threads: int = 1) -> str:
    if key == "a":
        return f"(a) MTCNN (facenet-pytorch) + PyTorch eager per face ({threads} torch thread{'s' * (threads > 1)})"
    if key.startswith(f"{SIZED}@"):
        return f"(c) predict --detector {SIZED} --detect-size {key.split('@')[1]} (device program)"
    return {"b": f"(b) predict --detector haar (host path; whole-frame search every {detect_every} frames)",
            "blazeface": "(c) predict --detector blazeface (device program, short range)",
            "blazeface_full_range": "(c) predict --detector blazeface_full_range (device program)"}[key]


def _print(args, report, detect_every) -> None:
    goal = []
    for height, runs, gap, threads, rates in report:
        a = runs["a"]
        rounds = len(a)
        print(f"\n# predict, {round(height * 16 / 9)}x{height}: {args.frames} frames, {len(SCENE)} faces each, {args.arch}, "
              f"batch {args.batch_size}, random weights; median of {rounds} round{'s' * (rounds > 1)} (speed: median of the "
              "per-round ratios)")
        print("| pipeline | frames/s | faces found | recall vs (a) | speed vs (a) |\n|---|---|---|---|---|")
        for key, results in runs.items():
            r = results[0]  # the faces are the same in every round
            fps = statistics.median(x.fps for x in results)
            speed = statistics.median(x.fps / y.fps for x, y in zip(results, a))
            recall = matched(a[0].boxes, r.boxes) / a[0].faces if a[0].faces else float("nan")
            print(f"| {_label(key, detect_every, threads)} | {fps:.2f} | {r.faces} | {recall:.3f} | {speed:.2f}x |")
            if key not in ("a", "b"):
                goal.append((key, height, speed, recall))
        print(f"(a)'s torch threads: the faster on the first {PROBE_FRAMES} frames ("
              + ", ".join(f"{t}: {v:.2f} frames/s" for t, v in rates.items()) + ")")
        for name, g in gap.items():
            if g["faces"]:
                print(f"device crop+resize vs PIL-exact (`--exact-preprocess`), {name}'s {g['faces']} faces, "
                      f"{g['size']}x{g['size']}: mean |diff| {g['mean']:.4f} levels, max {g['max']:.0f}; "
                      f"max |dprob| {g['dprob']:.2e}")
    print()
    for key, height, speed, recall in goal:
        ok = speed >= GOAL_SPEED and recall >= GOAL_RECALL
        print(f"goal ((c) >= {GOAL_SPEED:g}x (a), recall >= {GOAL_RECALL:.0%}), {key.replace('@', ' --detect-size ')}, {height}p: "
              f"{'holds' if ok else 'does not hold'} ({speed:.2f}x, {recall:.1%})")
