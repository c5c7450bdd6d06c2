"""Evaluation: Detectron2's evaluators by dataset type (PQ per class included) and the sweep of
a trained model over test-time steps."""
from .panoptic_evaluation import (PanopticEvaluatorPerClass, build_evaluator, final_panoptic_metrics,
                                  has_compiled_ops)
from .test_steps import set_test_steps, sweep_test_steps

__all__ = ["PanopticEvaluatorPerClass", "build_evaluator", "final_panoptic_metrics", "has_compiled_ops",
           "set_test_steps", "sweep_test_steps"]
