"""The Pathfinder experiments: runs of tools/train_pathfinder.py as subprocesses (runs.py), the
training-recipe study (study.py), the C-RBP-against-BPTT experiment (experiment.py) and what they
write (report.py). Each finished run's results.json is kept under benchmarks/results/pathfinder/,
so `--report-only` rebuilds every table and plot from the repository alone."""
