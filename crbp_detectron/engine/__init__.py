"""The training runtime on Detectron2's engine, grouped as detectron2.engine is: the trainer and the
tools' set-up (defaults), the guarded training step (train_loop), the hooks (hooks, preemption,
training_state) and the launchers (launch: Detectron2's launcher or torchrun)."""
from .defaults import (Trainer, add_dataset_argument, check_device, check_output_dir, dataset_opts,
                       register_datasets, setup)
from .launch import launch_from_args
from .preemption import Preempted
from .train_loop import GradientGuard, GuardedTrainer

__all__ = ["Trainer", "setup", "register_datasets", "add_dataset_argument", "dataset_opts", "check_device",
           "check_output_dir", "launch_from_args", "Preempted", "GradientGuard", "GuardedTrainer"]
