"""The Pathfinder generator: determinism, labels, markers, separation, on-disk format."""
import json
import os

import numpy as np
import pytest

from pathfinder.generator import (PathfinderConfig, PathfinderDataset, generate_dataset,
                                            generate_sample, preview_dataset)
from crbp_detectron.data.strokes import segment_distance

SMALL = dict(size=32, paddle_length=2.5, gap=2.0, paddle_width=1.0, distractors=3, distractor_length=4,
             marker_radius=1.25, continuity=40.0, clearance=1.5)
CONFIGS = [PathfinderConfig(length=7, **SMALL), PathfinderConfig(length=10, **SMALL),
           PathfinderConfig()]  # the 64 px default


def test_deterministic_per_seed_and_index():
    cfg = CONFIGS[0]
    a, b = generate_sample(cfg, seed=3, index=5), generate_sample(cfg, seed=3, index=5)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    c = generate_sample(cfg, seed=3, index=6)
    d = generate_sample(cfg, seed=4, index=5)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], d["image"])


def test_sizes_and_dtypes():
    for cfg in CONFIGS:
        s = generate_sample(cfg, 0, 0)
        assert s["image"].shape == (cfg.size, cfg.size) and s["image"].dtype == np.uint8
        assert s["mask"].shape == (cfg.size, cfg.size) and s["mask"].dtype == bool
        assert s["class"] is None
        assert s["image"].max() == 255 and s["mask"].any()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["L7", "L10", "default64"])
def test_label_is_exactly_the_marked_path_and_paths_never_touch(cfg):
    for index in range(12):
        s = generate_sample(cfg, seed=1, index=index, return_parts=True)
        cov = s["coverage"]
        assert cov.shape[0] == 1 + cfg.distractors  # target + distractors
        # The label: the pixels whose centre lies in a stroke of the marked path.
        assert np.array_equal(s["mask"], cov[0] >= 0.5)
        # The image shows every path; the label is the target only.
        assert np.allclose(s["image"], np.round(cov.max(0) * 255))
        others = cov[1:].max(0)
        # No distractor pixel in the label, and no pixel shared by the target and a distractor,
        # not even a faint anti-aliased one: the footprints are disjoint ...
        assert not (s["mask"] & (others > 0)).any()
        assert not ((cov[0] > 0) & (others > 0)).any()
        # ... and so are all the distractors' footprints.
        for p in range(1, cov.shape[0]):
            for q in range(p + 1, cov.shape[0]):
                assert not ((cov[p] > 0) & (cov[q] > 0)).any()
        # Exact geometry: every target stroke keeps radius + radius + 1 + clearance from every
        # stroke of another path.
        st = s["strokes"]
        tgt, oth = st.path == 0, st.path != 0
        d = segment_distance(st.a[tgt][:, None], st.b[tgt][:, None], st.a[oth][None], st.b[oth][None])
        need = st.radius[tgt][:, None] + st.radius[oth][None] + 1.0 + cfg.clearance
        assert np.all(d >= need - 1e-9)
        # The target has `length` paddles, the distractors `distractor_paddles` each.
        assert (st.index[tgt] >= 0).sum() == cfg.length
        for p in range(1, cov.shape[0]):
            assert (st.path == p).sum() == (cfg.length if p <= cfg.long_distractors else cfg.distractor_paddles)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["L7", "L10"])
def test_marker_sits_on_an_end_of_the_target(cfg):
    ends_used = set()
    for index in range(16):
        s = generate_sample(cfg, seed=2, index=index, return_parts=True)
        (marker,) = s["markers"]
        first, last = s["ends"]
        at_first, at_last = np.allclose(marker, first), np.allclose(marker, last)
        assert at_first or at_last
        ends_used.add(at_first)
        st = s["strokes"]
        is_marker = st.index < 0
        assert is_marker.sum() == 1 and st.path[is_marker][0] == 0
        assert st.radius[is_marker][0] == cfg.marker_radius
        x, y = np.rint(marker).astype(int)
        assert s["mask"][y, x]  # the marker's pixel is labelled (it belongs to the marked path)
        # The marker is brighter than the line somewhere around it: a full disk of radius > 1.
        assert s["image"][y, x] == 255
    assert ends_used == {True, False}  # both ends get the marker


def test_paths_do_not_touch_themselves():
    cfg = CONFIGS[1]
    for index in range(10):
        st = generate_sample(cfg, seed=5, index=index, return_parts=True)["strokes"]
        for p in np.unique(st.path):
            sel = (st.path == p) & (st.index >= 0)
            a, b, idx = st.a[sel], st.b[sel], st.index[sel]
            d = segment_distance(a[:, None], b[:, None], a[None], b[None])
            far = np.abs(idx[:, None] - idx[None]) > 1
            assert np.all(d[far] >= 2 * cfg.stroke_radius + 1.0 + cfg.clearance - 1e-9)


def test_classification_variant():
    cfg = PathfinderConfig(variant="classification", length=4, **dict(SMALL, distractors=1))
    classes = []
    for index in range(20):
        s = generate_sample(cfg, seed=0, index=index, return_parts=True)
        classes.append(s["class"])
        m1, m2 = s["markers"]
        first, last = s["ends"]
        same = {tuple(np.round(m1, 6)), tuple(np.round(m2, 6))} == {tuple(np.round(first, 6)), tuple(np.round(last, 6))}
        assert same == bool(s["class"])
    assert set(classes) == {0, 1}


def test_dataset_on_disk_roundtrip_and_worker_independence(tmp_path):
    cfg = CONFIGS[0]
    m1 = generate_dataset(str(tmp_path / "a"), cfg, n=40, seed=9, workers=1, chunk=7, progress=False)
    generate_dataset(str(tmp_path / "b"), cfg, n=40, seed=9, workers=2, chunk=13, progress=False)
    assert m1["count"] == 40 and m1["config"] == cfg.to_dict()
    with open(tmp_path / "a" / "manifest.json") as f:
        assert json.load(f)["files"] == {"images": "images.npy", "masks": "masks.npy"}
    a, b = PathfinderDataset(str(tmp_path / "a")), PathfinderDataset(str(tmp_path / "b"))
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert np.array_equal(np.asarray(a.masks), np.asarray(b.masks))
    # Compact: the masks are bit-packed.
    assert os.path.getsize(tmp_path / "a" / "masks.npy") < 40 * cfg.size * cfg.size / 8 + 256
    # The set holds exactly generate_sample's output.
    s = generate_sample(cfg, 9, 17)
    assert np.array_equal(np.asarray(a.images[17]), s["image"]) and np.array_equal(a.mask(17), s["mask"])
    image, mask = a[17]
    assert image.shape == (1, 32, 32) and str(image.dtype) == "torch.float32" and float(image.max()) == 1.0
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    images, masks = a.tensors()
    assert images.shape == (40, 1, 32, 32) and masks.shape == (40, 1, 32, 32)
    assert np.array_equal(masks[17, 0].numpy().astype(bool), s["mask"])
    preview = tmp_path / "preview.png"
    preview_dataset(str(preview), a, count=8)
    assert preview.stat().st_size > 1000


def test_classification_dataset(tmp_path):
    cfg = PathfinderConfig(variant="classification", length=4, **dict(SMALL, distractors=1))
    generate_dataset(str(tmp_path), cfg, n=12, seed=0, workers=1, progress=False)
    ds = PathfinderDataset(str(tmp_path))
    image, cls = ds[0]
    assert image.shape == (1, 32, 32) and cls.dtype.is_floating_point is False
    images, classes = ds.tensors()
    assert classes.shape == (12,) and set(classes.tolist()) <= {0, 1}


def test_long_distractors_have_the_target_length():
    cfg = PathfinderConfig(length=5, **dict(SMALL, distractor_length=3, long_distractors=1))
    for index in range(6):
        st = generate_sample(cfg, seed=0, index=index, return_parts=True)["strokes"]
        paddles = [int(((st.path == p) & (st.index >= 0)).sum()) for p in range(1 + cfg.distractors)]
        assert paddles == [5, 5, 3, 3]
    with pytest.raises(ValueError):
        PathfinderConfig(distractors=1, long_distractors=2)


def test_processes_asking_for_the_same_set_at_once_get_one_intact_set(tmp_path):
    """Runs started together share their data: one generates, the others wait for it."""
    import functools
    from multiprocessing import get_context

    import torch

    from pathfinder.generator import ensure_dataset

    cfg = PathfinderConfig(length=3, **SMALL)
    folder = str(tmp_path / "shared")
    with get_context("fork").Pool(3) as pool:
        manifests = pool.starmap(functools.partial(ensure_dataset, workers=1, progress=False),
                                 [(folder, cfg, 40, 7)] * 3)
    assert len({m["stats"]["seconds"] for m in manifests}) == 1  # generated once
    images, masks = PathfinderDataset(folder).tensors()
    reference = str(tmp_path / "alone")
    generate_dataset(reference, cfg, 40, seed=7, workers=1, progress=False)
    ref_images, ref_masks = PathfinderDataset(reference).tensors()
    assert torch.equal(images, ref_images) and torch.equal(masks, ref_masks)
