"""`predict --plot`: the figure built from hand-made tables (no models): every track or a note of
the hidden ones, markers on short tracks, the whole video's time axis, a fitted valence/arousal
axis, bar charts for still images, source and model in the title."""
from __future__ import annotations

import numpy as np
import pytest

from hsemo_jax.labels import HSE_CLASSES_8
from hsemo_jax.predict.pipeline import rows_to_table
from hsemo_jax.predict.plot import MAX_PANELS, figure, layout, plot

FPS = 25.0


def _face(source, frame, track, rng, *, time=True, sequence=None, va=None):
    p = rng.random(len(HSE_CLASSES_8))
    return {"source": source, "sequence": sequence or source, "frame": frame,
            "time": frame / FPS if time else None, "track_id": track, "box": np.array([0, 0, 10, 10.0]),
            "probs": p / p.sum(), "va": np.array(va if va is not None else rng.uniform(-1, 1, 2)), "au": None}


def _no_face(source, frame, *, time=True, sequence=None):
    return {"source": source, "sequence": sequence or source, "frame": frame,
            "time": frame / FPS if time else None, "track_id": -1, "box": None, "probs": None, "va": None,
            "au": None}


def video_table(tracks: dict[int, range], n_frames: int, source="clips/talk.mp4", va=None, models=("m1",)):
    """A video of `n_frames` frames; track t is seen on the frames of tracks[t]."""
    rng = np.random.default_rng(0)
    rows = []
    for f in range(n_frames):
        faces = [_face(source, f, t, rng, va=va(t, f) if va else None) for t, fr in tracks.items() if f in fr]
        rows += faces or [_no_face(source, f)]
    table = rows_to_table(rows, HSE_CLASSES_8, True, [])
    table.models = models
    return table


def still_table(faces_per_image: dict[str, int], models=("enet_b0_8_va_mtl",)):
    rng = np.random.default_rng(1)
    rows, tid = [], 0
    for i, (name, n) in enumerate(faces_per_image.items()):
        src = f"photos/{name}"
        if not n:
            rows.append(_no_face(src, i, time=False))
        for _ in range(n):
            rows.append(_face(src, i, tid, rng, time=False))
            tid += 1
    table = rows_to_table(rows, HSE_CLASSES_8, True, [])
    table.models = models
    return table


def _prob_axes(fig):
    return [ax for ax in fig.axes if ax.get_ylabel() == "probability"]


def _va_axes(fig):
    return [ax for ax in fig.axes if ax.get_ylabel() == "valence / arousal" or "valence" in
            [t.get_text() for t in ax.get_xticklabels()]]


def _texts(fig):
    return fig.get_suptitle() + " " + fig.get_supxlabel()


def test_every_track_gets_a_panel_longest_first():
    tracks = {t: range(t * 3, t * 3 + 2 + t) for t in range(8)}  # 8 tracks: more than the old 6
    fig = figure(video_table(tracks, 40))
    titles = [ax.get_title() for ax in _prob_axes(fig)]
    assert len(titles) == 8
    assert titles[0].startswith("track 7,") and titles[-1].startswith("track 0,")
    assert "not shown" not in _texts(fig)


def test_tracks_over_the_cap_are_named_in_the_figure_and_on_stderr(tmp_path, capsys):
    tracks = {t: range(t, t + 30 - t) for t in range(MAX_PANELS + 3)}  # 15 tracks, track 0 the longest
    table = video_table(tracks, 40)
    plan = layout(table)
    assert len(plan.panels) == MAX_PANELS and len(plan.hidden) == 3
    fig = figure(table)
    assert len(_prob_axes(fig)) == MAX_PANELS
    text = _texts(fig)
    assert "+3 more tracks not shown" in text
    assert all(f"track {t}:" in text for t in (12, 13, 14))  # the shortest three
    out = plot(table, tmp_path / "p.png")
    assert out.stat().st_size > 10_000
    err = capsys.readouterr().err
    assert "shows 12 of 15 tracks" in err and "track 14" in err


def test_a_one_detection_track_is_drawn_with_markers():
    fig = figure(video_table({1: range(0, 30), 2: range(12, 13)}, 30))
    panels = {ax.get_title().split(",")[0]: ax for ax in _prob_axes(fig)}
    short = panels["track 2"].get_lines()
    assert short and all(line.get_marker() == "o" for line in short)
    assert all(line.get_marker() in ("None", None, "") for line in panels["track 1"].get_lines())
    va = [ax for ax in fig.axes if ax.get_ylabel() == "valence / arousal"]
    assert any(line.get_marker() == "o" for ax in va for line in ax.get_lines())


def test_the_time_axis_spans_the_whole_video():
    table = video_table({0: range(10, 68)}, 160)  # 6.4 s; the face is gone after 2.7 s
    fig = figure(table)
    ax = _prob_axes(fig)[0]
    lo, hi = ax.get_xlim()
    assert lo <= 0 and hi >= 159 / FPS
    assert ax.get_shared_x_axes().joined(ax, _va_axes(fig)[0])
    assert "time (s)" in [a.get_xlabel() for a in fig.axes]


def test_the_va_axis_fits_the_data():
    table = video_table({0: range(0, 20)}, 20, va=lambda t, f: (-1.64 if f == 5 else 0.2, 1.3 if f == 9 else 0.1))
    (ax,) = [ax for ax in figure(table).axes if ax.get_ylabel() == "valence / arousal"]
    lo, hi = ax.get_ylim()
    assert lo < -1.64 and hi > 1.3
    fig = figure(video_table({0: range(0, 20)}, 20, va=lambda t, f: (0.1, -0.2)))
    (ax,) = [ax for ax in fig.axes if ax.get_ylabel() == "valence / arousal"]
    assert ax.get_ylim()[0] <= -1 and ax.get_ylim()[1] >= 1  # never narrower than [-1, 1]


def test_title_names_source_and_models():
    fig = figure(video_table({0: range(5)}, 5, models=("models/enet_b0_8_va_mtl/", "mbf_va_mtl.pt")))
    text = fig.get_suptitle()
    assert "talk.mp4" in text and "enet_b0_8_va_mtl" in text and "mbf_va_mtl.pt" in text
    assert "other_model" in figure(video_table({0: range(5)}, 5), models="other_model").get_suptitle()


def test_still_images_get_a_bar_chart_per_face():
    table = still_table({"a.jpg": 1, "b.png": 2, "c.jpg": 0})
    plan = layout(table)
    assert plan.still and plan.no_face == ["c.jpg"]
    fig = figure(table)
    probs = _prob_axes(fig)
    assert [ax.get_title() for ax in probs] == ["a.jpg", "b.png, track 1", "b.png, track 2"]
    for ax in probs:
        assert len(ax.patches) == len(HSE_CLASSES_8) and not ax.get_lines()
        assert [t.get_text() for t in ax.get_xticklabels()] == list(HSE_CLASSES_8)
    heights = [p.get_height() for p in probs[0].patches]
    np.testing.assert_allclose(heights, [table[f"p_{c}"][0] for c in HSE_CLASSES_8])
    va = _va_axes(fig)
    assert len(va) == 3 and all(len(ax.patches) == 2 for ax in va)
    text = _texts(fig)
    assert "photos/ (3 images)" in text and "enet_b0_8_va_mtl" in text and "no face found in: c.jpg" in text


def test_a_single_image_is_a_still_and_its_name_is_the_title():
    fig = figure(still_table({"portrait.jpg": 1}))
    assert [ax.get_title() for ax in _prob_axes(fig)] == ["portrait.jpg"]
    assert fig.get_suptitle().startswith("portrait.jpg")


def test_no_faces_says_so(tmp_path):
    table = video_table({}, 10)
    fig = figure(table)
    assert any("no faces detected in 10 frame(s)" in t.get_text() for ax in fig.axes for t in ax.texts)
    assert plot(table, tmp_path / "none.png").exists()


@pytest.mark.parametrize("numbered", [True, False])
def test_frame_folders_are_timelines_per_folder(numbered):
    """ABAW-style frame folders: each image is its own source but the folder is the sequence."""
    rng = np.random.default_rng(2)
    rows = [_face(f"v1/{f:05d}.jpg", f, 0, rng, time=False, sequence="v1") for f in range(1, 9)]
    rows += [_face(f"v2/{f:05d}.jpg", f, 0, rng, time=False, sequence="v2") for f in range(1, 4)]
    table = rows_to_table(rows, HSE_CLASSES_8, True, [])
    if not numbered:
        table.sequences = None  # a table without sequences: every source is its own, so stills
    plan = layout(table)
    assert plan.still is not numbered
    if numbered:
        assert [p.title for p in plan.panels] == ["track 0 (v1), 8 detections", "track 0 (v2), 3 detections"]
        assert [ax.get_xlabel() for ax in figure(table).axes if ax.get_xlabel()] == ["frame", "frame"]
