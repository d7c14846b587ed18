"""`hsemo-jax bench predict`'s pieces on a tiny clip (the scene, MTCNN + eager PyTorch, the device
program's faces matched to MTCNN's, the resize gap) and its table and goal lines."""
import argparse
import io
from contextlib import redirect_stdout

import numpy as np
import pytest

from hsemo_jax.bench import predict as bench


def test_matching_is_one_to_one_per_frame_at_the_iou_threshold():
    ref = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]]), np.zeros((0, 4)), np.array([[0, 0, 10, 10]])]
    # frame 0: two boxes on the first face (it counts once), one with IoU 0.25 on the second;
    # frame 1: nothing to find; frame 2: the face's box is on frame 1 instead
    found = [np.array([[0, 0, 10, 9], [0, 0, 10, 10], [20, 0, 25, 5]]), np.array([[0, 0, 10, 10]]),
             np.zeros((0, 4))]
    assert bench.matched(ref, found) == 1
    assert bench.matched(ref, found, min_iou=0.2) == 2
    assert bench.matched(ref, ref) == 3


def test_pieces_on_a_tiny_clip(model_dir, tmp_path):
    pytest.importorskip("facenet_pytorch")
    from hsemo_jax.bench.common import torch_reference
    from hsemo_jax.models import registry

    clip = bench.make_video(tmp_path / "clip.mp4", 2, 180)
    frames = bench.read_frames(clip)
    assert len(frames) == 2 and frames[0].shape == (180, 320, 3)
    arch = registry.get_arch("mobilefacenet")
    ref = torch_reference("mobilefacenet").eval()
    # the random weights' batch norms recomputed on the scene, the same in JAX and PyTorch: outputs
    # that depend on the face (before: the same to ~1e-5 for every input)
    import torch

    from hsemo_jax.convert import convert_state_dict
    model = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, "mobilefacenet", 10)
    bench.calibrate(model, ref, "mobilefacenet")
    from hsemo_jax.models.transforms import preprocess_images
    x = preprocess_images([frames[0][:112, :112], frames[1][60:172, 150:262]], 112, arch.mean, arch.std)
    ours = np.asarray(model(x))
    np.testing.assert_allclose(ours, ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy(), atol=1e-4)
    assert np.ptp(ours, axis=0).max() > 0.1
    a = bench.mtcnn_torch_pipeline(clip, ref, arch.input_size, arch.mean, arch.std)
    assert a.frames == 2 and a.faces >= 2  # at least the close astronaut on every frame
    c, table = bench.timed_predict(clip, model_dir, detector="blazeface", batch_size=4)
    assert c.frames == 2 and c.faces == int(table.has_face.sum()) >= 2
    assert bench.matched(a.boxes, c.boxes) >= 2  # the close astronaut, found by both
    gap = bench.resize_gap(frames, table, model_dir, 4)
    assert gap["faces"] == c.faces and gap["size"] == 112
    assert gap["max"] == gap["mean"] == 0  # the device resize is Pillow's
    assert gap["dprob"] < 1e-4



def test_table_and_goal_lines():
    """Median frames/s over rounds, and the median of the per-round speed ratios (round 2 ran at
    half speed for every pipeline: the ratios keep the first round's)."""
    boxes = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]])] * 2
    slow = lambda r: bench.Result(r.seconds * 2, r.frames, r.boxes)  # noqa: E731
    a = bench.Result(2.0, 2, boxes)  # 1 frame/s, 4 faces
    runs = {"a": a, "b": bench.Result(0.5, 2, [boxes[0][:1], np.zeros((0, 4))]),
            "blazeface": bench.Result(0.2, 2, boxes), "blazeface_full_range": bench.Result(0.1, 2, []),
            "blazeface_full_range@192": bench.Result(0.4, 2, [boxes[0], np.zeros((0, 4))])}
    runs = {k: [r, slow(r), r] for k, r in runs.items()}
    report = [(180, runs, {"blazeface": {"faces": 4, "size": 112, "mean": 0.01, "max": 1.0, "dprob": 1e-5}}, 2,
               {1: 0.9, 2: 1.0})]
    args = argparse.Namespace(frames=2, arch="mobilefacenet", batch_size=4)
    with redirect_stdout(out := io.StringIO()):
        bench._print(args, report, 5)
    text = out.getvalue()
    assert "median of 3 rounds" in text
    assert "| (a) MTCNN (facenet-pytorch) + PyTorch eager per face (2 torch threads) | 1.00 | 4 | 1.000 | 1.00x |" in text
    assert "every 5 frames) | 4.00 | 1 | 0.250 | 4.00x |" in text
    assert "short range) | 10.00 | 4 | 1.000 | 10.00x |" in text
    assert "(device program) | 20.00 | 0 | 0.000 | 20.00x |" in text
    assert "blazeface, 180p: holds (10.00x, 100.0%)" in text
    assert "--detect-size 192 (device program) | 5.00 | 2 | 0.500 | 5.00x |" in text  # `--detect-sizes 192`
    assert "blazeface_full_range --detect-size 192, 180p: does not hold (5.00x, 50.0%)" in text
    runs["a"][0] = bench.Result(4.0, 2, boxes)  # (a) slow in round 1 only: 20x, 10x, 10x -> 10x
    with redirect_stdout(out := io.StringIO()):
        bench._print(args, report, 5)
    assert "short range) | 10.00 | 4 | 1.000 | 10.00x |" in out.getvalue()
