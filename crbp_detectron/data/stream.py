"""A training data stream that can be checkpointed and resumed exactly, with or without data workers,
on any number of processes.

- The order is Detectron2's TrainingSampler's (an infinite seeded shuffle); every item carries its
  global stream position g (process r of w reads positions r, r + w, r + 2w, ...).
- The mapper (augmentation) runs with the Python, NumPy and torch RNGs seeded from (seed, g), and the
  process's own RNG states are put back after it: what an item becomes depends only on its
  position, not on which worker maps it, how many workers there are, or what ran before. The
  DataLoader draws its worker seeds from a private generator, so the stream never touches the global
  RNGs that the model uses (RoI sampling).
- Aspect-ratio grouping holds items back in its buckets; the stream state is the next position to
  read plus the held-back items, which a resumed stream replays first.
"""
import itertools
import logging
import operator
from contextlib import contextmanager
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.common import AspectRatioGroupedDataset, DatasetFromList, ToIterableDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

logger = logging.getLogger("detectron2.crbp")
POSITION_KEY = "stream_position"  # added to every mapped dict: (global position, dataset index)
Key = Tuple[int, int]


@contextmanager
def seeded_global_rngs(seed: int):
    """Seeds Python's, NumPy's and torch's global RNGs with `seed` for the block, then restores them."""
    import random

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class StreamSampler(TrainingSampler):
    """TrainingSampler yielding (global position, dataset index) for this process, starting at its
    `start`-th item, after replaying `pending` keys."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, start: int = 0, pending: Sequence[Key] = ()):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start, self.pending = start, [tuple(k) for k in pending]

    def __iter__(self):
        yield from self.pending
        world, rank = self._world_size, self._rank
        stream = enumerate(self._infinite_indices())
        yield from itertools.islice(stream, rank + self.start * world, None, world)


class PositionSeededDataset(torch.utils.data.Dataset):
    """Maps dataset dicts with the global RNGs seeded by the item's stream position (see above).
    A mapper error names the item's files."""

    def __init__(self, dataset_dicts: List[dict], mapper, seed: int):
        self.dicts = DatasetFromList(dataset_dicts, copy=False)
        self.mapper, self.seed = mapper, seed

    def __len__(self):
        return len(self.dicts)

    def item_seed(self, position: int, attempt: int = 0) -> int:
        return int(np.random.SeedSequence([self.seed, position, attempt]).generate_state(1)[0])

    def __getitem__(self, key: Key) -> dict:
        position, index = key
        for attempt in range(10):
            record = self.dicts[index]
            with seeded_global_rngs(self.item_seed(position, attempt)):
                try:
                    mapped = self.mapper(record)
                except Exception as e:
                    from .coco_panoptic import DatasetError

                    files = [record[k] for k in ("file_name", "pan_seg_file_name", "sem_seg_file_name") if k in record]
                    raise DatasetError(f"{', '.join(files)}: cannot be read for training ({type(e).__name__}: {e})") from e
            if mapped is not None:
                mapped[POSITION_KEY] = (position, index)
                return mapped
            # The mapper dropped the item (e.g. a crop without annotations): another, chosen by position.
            index = int(np.random.default_rng(self.item_seed(position, attempt)).integers(len(self.dicts)))
        raise RuntimeError(f"the mapper dropped 10 items in a row at stream position {position}")


class ResumableBatches:
    """Batches of the stream (grouped by aspect ratio, as Detectron2 does, or in order) that know
    which items they have read but not yet delivered: `state()` / the `start`, `pending` of a
    resumed stream."""

    def __init__(self, loader: torch.utils.data.DataLoader, batch_size: int, aspect_ratio_grouping: bool, start: int):
        self.loader, self.batch_size, self.grouping = loader, batch_size, aspect_ratio_grouping
        self._next_start = start
        self._held: Dict[Key, None] = {}  # read, not yet delivered, in reading order

    def _read(self):
        world = comm.get_world_size()
        for item in self.loader:
            key = tuple(item[POSITION_KEY])
            self._held[key] = None
            self._next_start = max(self._next_start, key[0] // world + 1)
            yield item

    def __iter__(self):
        items = self._read()
        batches = (AspectRatioGroupedDataset(items, self.batch_size) if self.grouping
                   else iter(lambda: list(itertools.islice(items, self.batch_size)), []))
        for batch in batches:
            for d in batch:
                del self._held[tuple(d[POSITION_KEY])]
            yield batch

    def state(self) -> dict:
        """Where a resumed stream continues: {"start": items of this process read, "pending": the
        keys read but not delivered, in reading order}."""
        return {"start": self._next_start, "pending": [list(k) for k in self._held]}


def build_resumable_train_loader(cfg, dataset_dicts: List[dict], mapper, seed: int, start: int = 0,
                                 pending: Sequence[Key] = (), worker_init_fn=None) -> ResumableBatches:
    """The training loader of `cfg` (batch size per process, workers, aspect-ratio grouping) over a
    resumable stream of `dataset_dicts`."""
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH = {total} must be a positive multiple of the {world} processes")
    sampler = StreamSampler(len(dataset_dicts), seed=seed, start=start, pending=pending)
    dataset = ToIterableDataset(PositionSeededDataset(dataset_dicts, mapper, seed), sampler)
    loader = torch.utils.data.DataLoader(
        dataset, num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=operator.itemgetter(0),
        worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(seed))
    return ResumableBatches(loader, total // world, cfg.DATALOADER.ASPECT_RATIO_GROUPING, start)
