"""Compatibility: the benchmarks' shared code used to live here; it is now split by concern
(methods, machine, memory, timing, measure, exact_gradient, report). Modules written against
the old layout keep working; new code imports from the modules themselves."""
from crbp_detectron.crbp.memory import saved_bytes  # noqa: F401
from crbp_detectron.crbp.solver import relative_residual  # noqa: F401
from crbp_detectron.utils.tables import fmt, markdown_table  # noqa: F401

from .exact_gradient import ExactGradient, agreement, exact_implicit_gradient, method_gradient  # noqa: F401
from .machine import cpu_model, machine_info, machine_line  # noqa: F401
from .measure import measure_group  # noqa: F401
from .memory import (MIB, REPO_ROOT, cuda_peak_bytes, is_oom, load_factory, peak_rss_in_subprocess,  # noqa: F401
                     release_memory, reset_peak_rss)
from .methods import (ALL_METHODS, NEUMANN_NOTE, OUR_METHODS, PENALIZED, TORCHDEQ_METHODS, Case,  # noqa: F401
                      MethodSettings, build_method, method_description, split_methods, torchdeq_status,
                      training_case)
from .report import command_line, plot_series  # noqa: F401
from .timing import median, paired_ratio, time_interleaved, time_step  # noqa: F401
