"""Pathfinder: a synthetic contour-tracing data set (see `generator.py` for the task).

geometry.py   strokes, distances, distance fields, the clearance test
generator.py  PathfinderConfig and one sample from (seed, index)
storage.py    data sets on disk (manifest + npy), PathfinderDataset
preview.py    picture grids of samples
__main__.py   command line
"""
from .generator import VARIANTS, PathfinderConfig, generate_sample
from .preview import preview_dataset, save_preview
from .storage import FORMAT_VERSION, PathfinderDataset, ensure_dataset, generate_dataset, load_manifest, write_prepared

__all__ = ["FORMAT_VERSION", "VARIANTS", "PathfinderConfig", "PathfinderDataset", "ensure_dataset",
           "generate_dataset", "generate_sample", "load_manifest", "preview_dataset", "save_preview", "write_prepared"]
