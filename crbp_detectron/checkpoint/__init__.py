"""Checkpointing (as detectron2.checkpoint): atomic writes, a resume past damaged files, load errors
that name the problem, and the trainer parts a checkpoint carries."""
from .checkpointer import (CheckpointedParts, Checkpointer, CheckpointError, atomic_write, check_weights_path,
                           describe_not_weights, describe_unreadable, remove_stale_temporaries)

__all__ = ["Checkpointer", "CheckpointedParts", "CheckpointError", "atomic_write", "check_weights_path",
           "describe_not_weights", "describe_unreadable", "remove_stale_temporaries"]
