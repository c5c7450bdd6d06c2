"""Benchmarks (not timed tests; results are committed under benchmarks/results), among them:

    python -m benchmarks.core_memory     memory and time of the four training modes against steps
    python -m benchmarks.recurrence      our modes against torchdeq's implicit backward, per workload

One concern per module, shared by the benchmarks:
    methods.py         the training methods compared (ours, torchdeq's) and one step's `Case`
    workloads.py       the recurrence benchmark's cells, sizes and cases; fpn_workload.py: the
                       full Panoptic FPN (GPU only)
    memory.py          saved bytes, peak RSS in a fresh subprocess, CUDA peak, releasing memory
    timing.py          time per step, round-robin across configurations
    measure.py         memory and time of a group of configurations
    exact_gradient.py  the exact implicit gradient (dense Jacobian and solve) and agreement with it
    step_profile.py    where one training step's time goes
    machine.py, report.py, recurrence_report.py   what the result files say
(common.py only re-exports these names for modules written against the former single module.)
"""
