"""The resumable training stream: an item's augmentation depends only on its stream position (the
same batches with 0 or 2 workers, on 1 or 2 processes), the stream never touches the global RNGs,
and a stream resumed from its state continues exactly, items held back by aspect-ratio grouping
included."""
import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.utils import comm

from crbp_detectron.data.stream import POSITION_KEY, build_resumable_train_loader
from crbp_detectron.config import get_cfg


def draw_mapper(record):
    """A mapper whose output depends on all three global RNGs, like Detectron2's augmentations."""
    out = dict(record)
    out["draws"] = (random.random(), float(np.random.rand()), float(torch.rand(())))
    return out


# Mixed aspect ratios, so that grouping holds items back.
RECORDS = [{"image_id": i, "width": 64 if i % 3 else 32, "height": 48} for i in range(11)]


def make_cfg(workers=0, batch=4, grouping=True):
    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS, cfg.SOLVER.IMS_PER_BATCH = workers, batch
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    return cfg


def content(batch):
    return [(d[POSITION_KEY], d["image_id"], d["draws"]) for d in batch]


def take(loader, n):
    return [content(b) for b in itertools.islice(loader, n)]


@pytest.mark.parametrize("grouping", [True, False])
def test_resumed_stream_continues_exactly_with_any_number_of_workers(grouping):
    uninterrupted = take(build_resumable_train_loader(make_cfg(0, grouping=grouping), RECORDS, draw_mapper, seed=3), 12)
    assert len({d[2] for b in uninterrupted for d in b}) == 48  # every item mapped with its own draws
    with_workers = take(build_resumable_train_loader(make_cfg(2, grouping=grouping), RECORDS, draw_mapper, seed=3), 12)
    assert with_workers == uninterrupted
    for workers, stop in ((0, 5), (2, 7)):
        first = build_resumable_train_loader(make_cfg(workers, grouping=grouping), RECORDS, draw_mapper, seed=3)
        iterator = iter(first)
        assert [content(next(iterator)) for _ in range(stop)] == uninterrupted[:stop]
        state = first.state()
        if grouping:
            assert state["pending"], "the test should stop with items held back by the grouping"
        resumed = build_resumable_train_loader(make_cfg(workers, grouping=grouping), RECORDS, draw_mapper, seed=3,
                                               **state)
        assert take(resumed, 12 - stop) == uninterrupted[stop:]


def test_stream_leaves_the_global_rngs_alone():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    for workers in (0, 2):
        take(build_resumable_train_loader(make_cfg(workers), RECORDS, draw_mapper, seed=3), 4)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_two_processes_share_one_stream(monkeypatch):
    """Rank r of 2 reads global positions r, r + 2, ...: together the same items with the same
    augmentation as one process, whose batches of 4 are the two ranks' batches of 2."""
    single = take(build_resumable_train_loader(make_cfg(0, grouping=False), RECORDS, draw_mapper, seed=5), 6)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        per_rank.append(take(build_resumable_train_loader(make_cfg(0, grouping=False), RECORDS, draw_mapper, seed=5), 6))
    for i, batch in enumerate(single):
        assert sorted(batch) == sorted(per_rank[0][i] + per_rank[1][i])
    assert all(d[0][0] % 2 == rank for rank in (0, 1) for b in per_rank[rank] for d in b)
