"""grain loaders: exact model preprocessing, torchvision-exact augmentation, seeded determinism,
fixed-shape padded batches, multi-process sharding, checkpointable iterator state."""
import math

import cv2
import grain
import numpy as np
import pytest

import data_fixtures as F
from data_pipelines import augment as A
from data_pipelines.images import decode_rgb
from data_pipelines.loaders import ImageFolderSource, Preprocessing, make_loader, num_batches
from data_pipelines.sequences import SequenceSource, gather, pack_sequences
from hsemo_jax.errors import InputError
from hsemo_jax.models import preprocess, preprocess_images

NO_SHARD = grain.sharding.NoSharding()


def _source(n=11, size=48):
    """In-memory source shaped like a built dataset: JPEG bytes, name, numeric labels."""
    return [{"image": cv2.imencode(".jpg", F.crop(i, size))[1].tobytes(), "name": f"v/{i:05d}.jpg".encode(),
             "label": np.int64(i % 8), "va": np.float32([i / 20, -i / 20])} for i in range(n)]


def _all(ds):
    it = iter(ds)
    out = list(it)
    if hasattr(it, "close"):
        it.close()
    return out


def test_eval_batches_are_the_model_preprocessing_padded_and_masked():
    src = _source(11)
    prep = Preprocessing.for_arch("mbf_va_mtl")
    assert prep == Preprocessing(112, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    batches = _all(make_loader(src, prep, batch_size=4, shard_options=NO_SHARD))
    assert len(batches) == 3 == num_batches(11, 4, NO_SHARD)
    for b in batches:
        assert b["image"].shape == (4, 112, 112, 3) and b["image"].dtype == np.float32
        assert b["mask"].shape == (4,) and b["va"].shape == (4, 2) and b["label"].dtype == np.int64
    last = batches[-1]
    assert last["mask"].tolist() == [True, True, True, False] and last["index"][-1] == -1
    assert not last["image"][-1].any() and last["label"][-1] == 0
    images = np.concatenate([b["image"] for b in batches])[:11]
    rgb = [decode_rgb(s["image"]) for s in src]
    np.testing.assert_array_equal(images, preprocess("mbf_va_mtl", rgb))  # bit-exact
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:11], [s["label"] for s in src])


def test_affine_nearest_is_pil_transform_exactly():
    from PIL import Image

    img = cv2.cvtColor(F.crop(5, 112), cv2.COLOR_BGR2RGB)[:100]  # non-square
    rng = np.random.default_rng(2)
    for _ in range(40):
        angle, t, scale = A.random_affine_params(rng, A.DDAMFN, 112, 100)
        m = A.inverse_affine_matrix((56.0, 50.0), angle, t, scale)
        ref = Image.fromarray(img).transform((112, 100), Image.Transform.AFFINE, m, Image.Resampling.NEAREST,
                                             fillcolor=0)
        np.testing.assert_array_equal(A.affine_nearest(img, m), np.asarray(ref))
    # the inverse matrix sends the translated centre back to the centre, rotation/scale undone
    m = A.inverse_affine_matrix((56.0, 50.0), 30.0, (7, -4), 0.8)
    np.testing.assert_allclose([m[0] * 63 + m[1] * 46 + m[2], m[3] * 63 + m[4] * 46 + m[5]], [56, 50])
    np.testing.assert_allclose(np.array(m).reshape(2, 3)[:, :2] * 0.8,
                               [[math.cos(math.radians(30)), math.sin(math.radians(30))],
                                [-math.sin(math.radians(30)), math.cos(math.radians(30))]])


def test_affine_matches_torchvision_on_pil_exactly():
    from PIL import Image
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = cv2.cvtColor(F.crop(3, 112), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(1)
    for _ in range(25):
        angle, t, scale = A.random_affine_params(rng, A.DDAMFN, 112, 112)
        assert -20 <= angle <= 20 and 0.8 <= scale <= 1 and max(map(abs, t)) <= 22
        ref = TF.affine(Image.fromarray(img), angle, list(t), scale, [0.0, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=0)
        out = A.affine_nearest(img, A.inverse_affine_matrix((56.0, 56.0), angle, t, scale))
        np.testing.assert_array_equal(out, np.asarray(ref))


def test_random_erasing_box_and_probabilities():
    rng = np.random.default_rng(0)
    cfg = A.AugmentConfig(erase_p=1.0)
    areas = []
    for _ in range(200):
        x = np.ones((112, 112, 3), np.float32)
        A.random_erase(x, rng, cfg)
        erased = ~x.any(-1)
        ys, xs = np.nonzero(erased)
        if len(ys):  # one axis-aligned rectangle, set to the value 0
            assert erased[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
            areas.append(erased.sum() / 112 ** 2)
    assert len(areas) > 150 and 0.015 < min(areas) and max(areas) < 0.36
    pp = A.DDAMFN_PP  # DDAMFN++: always, 5% of the image
    x = np.ones((112, 112, 3), np.float32)
    A.random_erase(x, rng, pp)
    assert abs((~x.any(-1)).sum() / 112 ** 2 - 0.05) < 0.01
    tiny = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    flip_only = A.AugmentConfig(affine_p=0.0)
    flips = sum(np.array_equal(A.augment_uint8(tiny, rng, flip_only)[:, 0], tiny[:, 1]) for _ in range(400))
    assert 150 < flips < 250  # p = 0.5


def test_training_is_seeded_deterministic_and_differs_per_epoch():
    src = _source(10)
    prep = Preprocessing.for_arch("ddamfn")

    def run(seed):
        return _all(make_loader(src, prep, batch_size=5, train=True, seed=seed, num_epochs=2,
                                shard_options=NO_SHARD))

    a, b, c = run(7), run(7), run(8)
    assert len(a) == 4
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    epoch1, epoch2 = np.concatenate([x["index"] for x in a[:2]]), np.concatenate([x["index"] for x in a[2:]])
    assert sorted(epoch1) == sorted(epoch2) == list(range(10)) and list(epoch1) != list(epoch2)
    eval_img = _all(make_loader(src, prep, batch_size=5, shard_options=NO_SHARD))
    by_index = {int(i): img for b in eval_img for i, img in zip(b["index"], b["image"])}
    changed = [not np.array_equal(img, by_index[int(i)]) for b in a for i, img in zip(b["index"], b["image"])]
    assert sum(changed) >= 15  # P(no flip, no affine, no erasing) = 0.5 * 0.3 * 0.5


def test_evaluation_shards_cover_every_example_once():
    src = _source(11)
    prep = Preprocessing.for_arch("mbf_va_mtl")
    seen, counts = [], []
    for p in range(2):
        opts = grain.sharding.ShardOptions(shard_index=p, shard_count=2)
        batches = _all(make_loader(src, prep, batch_size=2, shard_options=opts, fields=["label"]))
        counts.append(len(batches))
        assert len(batches) == num_batches(11, 2, opts)
        seen += [int(i) for b in batches for i, m in zip(b["index"], b["mask"]) if m]
    assert sorted(seen) == list(range(11))
    assert counts[0] == counts[1] == 3  # equal step counts keep hosts in step


def test_training_global_batches_do_not_depend_on_the_process_count():
    """2 shards of 2 rows, each reading its half of every global batch, see exactly the rows,
    positions and augmented pixels of 1 shard of 4 rows; epochs are exact (11 // 4 = 2 batches,
    3 rows left out, a different 3 in each epoch)."""
    src = _source(11, size=40)
    prep = Preprocessing.for_arch("ddamfn")
    kw = dict(train=True, seed=4, num_epochs=2, normalize=False)
    whole = _all(make_loader(src, prep, batch_size=4, shard_options=NO_SHARD, **kw))
    halves = [_all(make_loader(src, prep, batch_size=2, shard_options=grain.sharding.ShardOptions(p, 2), **kw))
              for p in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 4 == 2 * num_batches(11, 2, grain.sharding.ShardOptions(0, 2),
                                                                                   train=True)
    for t, b in enumerate(whole):
        for k in ("image", "erase", "index", "position", "label"):
            np.testing.assert_array_equal(b[k], np.concatenate([halves[0][t][k], halves[1][t][k]]), err_msg=k)
        assert b["position"].tolist() == list(range(4 * t, 4 * t + 4))
    for epoch in (whole[:2], whole[2:]):
        idx = np.concatenate([b["index"] for b in epoch])
        assert len(set(idx.tolist())) == 8
    order = [np.random.default_rng([4, 0, e]).permutation(11)[:8] for e in range(2)]
    assert np.concatenate([b["index"] for b in whole]).tolist() == np.concatenate(order).tolist()
    assert whole[0]["image"].dtype == np.uint8 and whole[0]["erase"].shape == (4, 4)


def test_uint8_batches_with_erasing_boxes_normalize_to_the_float_batches():
    src = _source(6, size=40)
    prep = Preprocessing.for_arch("ddamfn")
    kw = dict(batch_size=6, train=True, seed=1, augment=A.AugmentConfig(erase_p=1.0), shard_options=NO_SHARD)
    (f,) = _all(make_loader(src, prep, **kw))
    (u,) = _all(make_loader(src, prep, normalize=False, **kw))
    x = preprocess_images(u["image"], 112, prep.mean, prep.std)
    for row, (top, left, h, w) in zip(x, u["erase"]):
        row[top:top + h, left:left + w] = 0
    np.testing.assert_array_equal(x, f["image"])
    assert (u["erase"][:, 2] > 0).sum() >= 5


def test_class_balanced_sampling_draws_classes_equally():
    """DDAMFN's ImbalancedDatasetSampler: draws with replacement, weight 1/count of the class."""
    labels = np.array([0] * 40 + [1] * 8 + [2] * 2)
    src = [{"image": cv2.imencode(".jpg", F.crop(0, 16))[1].tobytes(), "label": np.int64(c)} for c in labels]
    counts = np.bincount(labels)
    ds = make_loader(src, Preprocessing(16, (0.5,) * 3, (0.5,) * 3), batch_size=50, train=True, seed=0,
                     num_epochs=20, weights=1.0 / counts[labels], shard_options=NO_SHARD, augment=None)
    drawn = np.concatenate([b["label"] for b in _all(ds)])
    assert len(drawn) == 1000
    share = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.05)


def test_iterator_state_restores_exactly_and_with_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    src = _source(9)
    prep = Preprocessing.for_arch("ddamfn")

    def loader():
        return make_loader(src, prep, batch_size=2, train=True, seed=3, num_epochs=None, shard_options=NO_SHARD)

    it = iter(loader())
    for _ in range(3):
        next(it)
    state = it.get_state()
    ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    ckpt.save(tmp_path / "iter", args=grain.checkpoint.CheckpointSave(it))
    expected = [next(it) for _ in range(4)]  # crosses into epoch 2
    fresh = iter(loader())
    fresh.set_state(state)
    restored = iter(loader())
    ckpt.restore(tmp_path / "iter", args=grain.checkpoint.CheckpointRestore(restored))
    for e in expected:
        for other in (next(fresh), next(restored)):
            np.testing.assert_array_equal(e["image"], other["image"])
            np.testing.assert_array_equal(e["index"], other["index"])


def test_worker_processes_give_identical_batches():
    src = _source(8)
    prep = Preprocessing.for_arch("mbf_va_mtl")
    kw = dict(batch_size=4, train=True, seed=5, num_epochs=1, shard_options=NO_SHARD)
    inproc = _all(make_loader(src, prep, **kw))
    workers = _all(make_loader(src, prep, worker_count=1, **kw))
    assert len(inproc) == len(workers) == 2
    for x, y in zip(inproc, workers):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_bad_image_policy_in_loader(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(cv2.imencode(".jpg", F.crop(i, 32))[1].tobytes())
    (tmp_path / "1.jpg").write_bytes(b"garbage")
    src = ImageFolderSource(tmp_path)
    prep = Preprocessing.for_arch("ddamfn")
    (b,) = _all(make_loader(src, prep, batch_size=4, shard_options=NO_SHARD, text_fields=["name"]))
    assert b["mask"].tolist() == [True, False, True, False]
    assert b["index"].tolist() == [0, 1, 2, -1] and b["name"].tolist() == [b"0.jpg", b"1.jpg", b"2.jpg", b""]
    with pytest.raises(InputError, match=r"1\.jpg: corrupt image"):
        _all(make_loader(src, prep, batch_size=4, shard_options=NO_SHARD, on_bad_image="error"))


def test_sequence_packing_per_video():
    videos = np.array(["b", "a", "b", "a", "b", "b", "b"])
    frames = np.array([5, 2, 1, 1, 3, 2, 4])
    idx, mask = pack_sequences(videos, frames, seq_len=3)
    assert idx.tolist() == [[2, 5, 4], [6, 0, -1], [3, 1, -1]]  # b: frames 1..5, then a: 1, 2
    assert mask.tolist() == [[True] * 3, [True, True, False], [True, True, False]]
    over, _ = pack_sequences(videos, frames, seq_len=3, stride=2)
    assert over.tolist() == [[2, 5, 4], [4, 6, 0], [3, 1, -1]]
    g = gather({"x": frames.astype(np.float32) * 10}, idx)
    assert g["x"].tolist() == [[10, 20, 30], [40, 50, 0], [10, 20, 0]]
    src = SequenceSource({"video": videos, "frame": frames}, "video", "frame", 4)
    assert len(src) == 3 and src[1]["frame"].tolist() == [5, 0, 0, 0] and src[1]["mask"].sum() == 1
    assert math.isclose(len(pack_sequences(videos, frames, 10)[0]), 2)
