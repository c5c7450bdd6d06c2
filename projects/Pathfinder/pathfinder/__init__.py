"""Pathfinder (contour tracing, the C-RBP paper's first experiment) on the project's Detectron2
engine: config keys (config.py), the registered model (model.py), data registration and streams
(data.py), metrics (evaluation.py), trainer and final report (engine.py). The data generator is
`pathfinder.generator`; the command line is the project's train_net.py; the whole experiment
(models x seeds, tables, plots) is the project's `experiments` package."""
from .config import add_pathfinder_config, get_pathfinder_cfg, load_pathfinder_config
from .model import PathfinderModel, count_parameters, pixel_loss

__all__ = ["PathfinderModel", "add_pathfinder_config", "count_parameters", "get_pathfinder_cfg",
           "load_pathfinder_config", "pixel_loss"]
