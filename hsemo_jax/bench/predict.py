"""`hsemo-jax bench predict`: end-to-end frames/s of `predict` on a generated 720p video with faces,
against a per-face eager PyTorch pipeline like the original's (same video, Haar detector, crops and
weights; each face: PIL resize + torchvision normalize + one eager forward), in the same run: the
Haar host path (whole-frame search every 5th frame, and on every frame) and the default device
program (BlazeFace, full range by default, on every frame, `hsemo_jax.predict.device`).

The generated video moves real faces (scikit-image's astronaut, a test dependency) over a 1280x720
frame. Weights are random (the same in both pipelines): speed does not depend on them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="tf_efficientnet_b0", help="backbone (default tf_efficientnet_b0)")
    p.add_argument("--frames", type=int, default=60, help="frames in the generated video")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--detector", default="blazeface_full_range", choices=("blazeface", "blazeface_full_range"),
                   help="the device program's detector (default blazeface_full_range: the short-range model "
                        "sees the generated video's faces at ~15 px of its 128 px input and misses them)")


def make_video(path: Path, n_frames: int, size=(1280, 720), fps: float = 25.0) -> Path:
    import cv2
    from skimage import data

    w, h = size
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[:300, 80:430]  # head and shoulders
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n_frames):
        frame = np.full((h, w, 3), 90, np.uint8)
        for j, (x0, y0) in enumerate([(100, 150), (700, 250)]):  # two people moving
            s = 0.9 + 0.15 * np.sin(0.2 * i + j)
            f = cv2.resize(face, None, fx=s, fy=s)
            x, y = int(x0 + 60 * np.sin(0.1 * i + j)), int(y0 + 30 * np.cos(0.1 * i))
            fh, fw = min(f.shape[0], h - y), min(f.shape[1], w - x)
            frame[y:y + fh, x:x + fw] = f[:fh, :fw]
        vw.write(frame)
    vw.release()
    return path


def torch_pipeline(video: Path, ref, size, mean, std) -> tuple[int, int]:
    """The original's way: per frame, detect (full resolution); per face, PIL resize, normalize,
    eager forward. Returns (frames, faces)."""
    import cv2
    import torch
    from PIL import Image
    from torchvision import transforms

    from hsemo_jax.predict.detect import HaarDetector, crop

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    detect = HaarDetector()
    cap = cv2.VideoCapture(str(video))
    n = faces = 0
    with torch.no_grad():
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            for box in detect(rgb):
                face = crop(rgb, box)
                if face is not None:
                    ref(tf(Image.fromarray(face))[None])
                    faces += 1
            n += 1
    return n, faces


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.bench.common import torch_reference
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.convert import convert_state_dict
    from hsemo_jax.models import registry
    from hsemo_jax.predict import predict
    from hsemo_jax.predict.defaults import DETECT_EVERY, DETECT_WIDTH

    arch = registry.get_arch(args.arch)
    ref = torch_reference(args.arch)
    if ref is None:
        raise SystemExit("bench predict needs PyTorch and timm (pip install -e '.[test]')")
    import torch

    torch.set_grad_enabled(False)
    ref.eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = make_video(tmp / "faces720p.mp4", args.frames)
        model = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, args.arch, 10)
        save_model(model, ModelInfo.for_arch(args.arch, 10), tmp / "model")
        # warm-up: compile the fixed batch shapes once (excluded, as a long video amortizes it)
        common = dict(batch_size=args.batch_size, progress=False)
        predict(str(video), [str(tmp / "model")], detector="haar", **common)
        predict(str(video), [str(tmp / "model")], detector=args.detector, **common)
        runs = {}
        for every in sorted({1, DETECT_EVERY}):
            t0 = time.perf_counter()
            table = predict(str(video), [str(tmp / "model")], detector="haar", detect_every=every, **common)
            runs[every] = (time.perf_counter() - t0, int(table.has_face.sum()))
        t0 = time.perf_counter()
        table = predict(str(video), [str(tmp / "model")], detector=args.detector, **common)
        device = (time.perf_counter() - t0, int(table.has_face.sum()))
        t0 = time.perf_counter()
        n, ref_faces = torch_pipeline(video, ref, arch.input_size, arch.mean, arch.std)
        t_torch = time.perf_counter() - t0
    print(f"# predict: {args.frames} frames of 1280x720 with 2 faces each, {args.arch}, batch {args.batch_size}")
    print("| pipeline | faces found | frames/s | faces/s | speed-up |\n|---|---|---|---|---|")
    for every, (t_jax, faces) in runs.items():
        how = ("Haar, whole-frame search on every frame" if every == 1
               else f"Haar, whole-frame search every {every} frames, tracks followed between")
        print(f"| hsemo-jax predict (jit, batched; detection at {DETECT_WIDTH} px wide, {how}) | {faces} | "
              f"{args.frames / t_jax:.1f} | {faces / t_jax:.1f} | {t_torch / t_jax:.2f}x |")
    t_dev, faces = device
    print(f"| hsemo-jax predict, device program ({args.detector} on every frame, crops, model and blend in one jitted "
          f"program per {args.batch_size} frames) | {faces} | {args.frames / t_dev:.1f} | {faces / t_dev:.1f} | "
          f"{t_torch / t_dev:.2f}x |")
    print(f"| PyTorch eager, per face (detection at full size on every frame) | {ref_faces} | {n / t_torch:.1f} | "
          f"{ref_faces / t_torch:.1f} | 1x |")
    return 0
