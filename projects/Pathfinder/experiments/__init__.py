"""The Pathfinder experiments: runs of the project's train_net.py as subprocesses (runs.py), the
training-recipe study (study.py), the table of every model trained as long (experiment.py), the
marker-free line (marker_free.py), the diagnostics (equilibrium.py, selection.py, gradients.py)
and what they write (report.py). Each finished run's results.json is kept under results/,
so `--report-only` rebuilds every table and plot from the repository alone."""
