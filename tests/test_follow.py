"""Detection that follows tracks between full-frame searches (`hsemo_jax.predict.follow`)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from hsemo_jax.predict.detect import HaarDetector
from hsemo_jax.predict.follow import FollowingDetector
from hsemo_jax.predict.track import IoUTracker, iou

CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"


def _clip_frames():
    cap, frames = cv2.VideoCapture(str(CLIP)), []
    while (read := cap.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    return frames


class _Scripted:
    """A detector whose full search sees `faces[frame]` minus `hidden[frame]`, and whose `near`
    finds every face of the current frame within the searched region."""

    def __init__(self, faces, hidden=()):
        self.faces, self.hidden, self.frame, self.full_calls = faces, dict(hidden), 0, []

    def __call__(self, rgb):
        self.full_calls.append(self.frame)
        return np.array([b for i, b in enumerate(self.faces[self.frame]) if i not in self.hidden.get(self.frame, ())],
                        np.float32).reshape(-1, 4)

    def near(self, rgb, boxes):
        cur = np.asarray(self.faces[self.frame], np.float32).reshape(-1, 4)
        return [cur[iou(b[None], cur)[0] > 0] if len(cur) else cur for b in boxes]


def _run(det, every, n):
    follow, out = FollowingDetector(det, every), []
    for f in range(n):
        det.frame = f
        out.append(follow(None, f))
    return out


def test_faces_are_followed_between_full_searches_and_new_ones_found_at_the_next():
    a = [10, 10, 50, 50]
    faces = [[[a[0] + 2 * f, a[1], a[2] + 2 * f, a[3]]] for f in range(12)]  # one face moving right
    for f in range(7, 12):
        faces[f].append([200, 200, 240, 240])  # a second face enters at frame 7
    det = _Scripted(faces, hidden={5: (0,)})  # the full search at frame 5 misses the first face
    out = _run(det, every=5, n=12)
    assert det.full_calls == [0, 5, 10]
    assert all(len(b) >= 1 and ids[0] == 0 for b, ids in out)  # followed on every frame, one track
    np.testing.assert_allclose(out[5][0][0], faces[5][0])  # recovered by `near` on a keyframe
    assert [len(b) for b, _ in out[7:]] == [1, 1, 1, 2, 2]  # frames 7-11: the newcomer waits for frame 10
    assert out[10][1][1] == 1


def test_every_frame_is_plain_detection_and_tracking():
    frames = _clip_frames()
    haar = HaarDetector(max_width=960)
    tracker, follow = IoUTracker(), FollowingDetector(HaarDetector(max_width=960), every=1)
    # OpenCV's multi-threaded search may list the same faces in another order from call to call
    rows = lambda boxes: sorted(map(tuple, np.asarray(boxes).tolist()))  # noqa: E731
    for i, rgb in enumerate(frames):
        boxes, ids = follow(rgb, i)
        assert rows(boxes) == rows(haar(rgb))
        np.testing.assert_array_equal(ids, tracker.update(boxes, i))


def test_following_the_astronaut_keeps_the_face_and_its_box():
    """On the bundled clip, whole-frame search every 5th frame finds the face on about as many
    frames as searching every frame, with boxes close to the whole-frame ones."""
    frames = _clip_frames()
    haar = HaarDetector(max_width=960)
    full = [haar(rgb) for rgb in frames]
    follow = FollowingDetector(HaarDetector(max_width=960), every=5)
    followed = [follow(rgb, i)[0] for i, rgb in enumerate(frames)]
    with_face = lambda boxes: sum(len(b) > 0 for b in boxes)
    assert with_face(followed) >= with_face(full) - 3 and with_face(followed) >= 40
    for f, b in zip(full, followed):
        if len(f) and len(b):
            assert iou(f, b).max() > 0.5


def test_near_finds_a_face_around_its_box_and_nothing_elsewhere():
    from skimage import data

    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[200:712, 600:1112] = data.astronaut()[:512, :512]
    haar = HaarDetector()
    (box,) = haar(frame)
    shifted = box + np.array([15, -10, 15, -10], np.float32)  # where it was a few frames ago
    empty = np.array([50, 50, 200, 200], np.float32)
    found_face, found_none = haar.near(frame, np.stack([shifted, empty]))
    assert len(found_none) == 0
    assert iou(box[None], found_face).max() > 0.7


def test_detect_every_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        FollowingDetector(HaarDetector(), every=0)
