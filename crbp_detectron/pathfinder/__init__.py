"""Pathfinder (contour tracing): the hGRU and CNN models, training/evaluation, config runs.
The data generator is `crbp_detectron.data.pathfinder`."""
from .engine import PixelCounts, TrainConfig, evaluate, pixel_loss, saved_tensor_bytes, steps_sweep, train
from .model import PathfinderCNN, PathfinderHGRU, build_model, count_parameters

__all__ = ["PathfinderCNN", "PathfinderHGRU", "PixelCounts", "TrainConfig", "build_model", "count_parameters",
           "evaluate", "pixel_loss", "saved_tensor_bytes", "steps_sweep", "train"]
