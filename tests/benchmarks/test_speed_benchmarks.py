"""The forward-solver and training-speed benchmarks (issue 27) at tiny sizes: per-sample counts of
evaluations to a residual, the table rebuilt from the JSON alone, models timed side by side."""
import json

import torch

from benchmarks import forward_solvers, train_speed
from crbp_detectron.crbp import HGRUCell

from .test_benchmarks import table_rows


def test_forward_solvers_counts_per_sample_and_rebuilds_its_table(tmp_path):
    torch.manual_seed(0)
    cell = HGRUCell(4, 3, norm="group", num_groups=2, timesteps=20)  # slow gates: plain iteration crawls
    x = torch.rand(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    counts = forward_solvers.measure(cell, [x[:2], x[2:]], budget=300)
    assert set(counts) == set(forward_solvers.SOLVERS)
    plain, anderson = counts["plain"]["0.001"], counts["anderson (window 5)"]["0.001"]
    assert len(plain) == len(anderson) == 3 and all(plain) and all(anderson)
    assert sum(anderson) < sum(plain)
    # A count is the first evaluation under the target: the residuals recorded say so.
    f = forward_solvers.ResidualRecorder(cell, x)
    forward_solvers.solve_forward(f, torch.zeros_like(x), 300, 0.0)
    first = forward_solvers.first_under(f.residuals, 1e-3)
    assert first == plain and all(float(f.residuals[n - 1][i]) <= 1e-3 < float(f.residuals[n - 2][i])
                                  for i, n in enumerate(first))
    results = {"command": "python -m benchmarks.forward_solvers --tiny", "budget": 300, "machine": "m",
               "models": {"tiny": counts}, "notes": ["A note."]}
    (tmp_path / "forward_solvers.json").write_text(json.dumps(results))
    forward_solvers.main(["--report-only", "--out", str(tmp_path)])
    md = (tmp_path / "forward_solvers.md").read_text()
    rows = table_rows(md, ["tiny"])
    assert len(rows) == 4 and rows[0][1] == "anderson (window 5)" and "A note." in md
    assert float(rows[0][7]) == round(sum(anderson) / sum(plain), 3)  # the table rounds to 3 digits


def test_train_speed_times_models_side_by_side(tmp_path, demo_root, monkeypatch):
    monkeypatch.setenv("CRBP_DEMO_DIR", demo_root)
    models = ["feed-forward Panoptic FPN", "C-RBP, 5 VJPs"]
    train_speed.main(["--suite", "demo", "--models", *models, "--iterations", "2", "--warmup", "0",
                      "--threads", "1", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "train_speed_demo.json").read_text())
    assert list(results["times"]) == models and all(len(t) == 2 for t in results["times"].values())
    # the demo recipe's 6 steps per RoI: 5 graph-free evaluations and the recorded one (no tolerance)
    assert results["evaluations"] == {models[0]: None, models[1]: 6.0}
    (tmp_path / "train_speed_demo.md").unlink()
    train_speed.main(["--report-only", "--out", str(tmp_path)])
    rows = table_rows((tmp_path / "train_speed_demo.md").read_text(), models)
    assert [r[0] for r in rows] == models and rows[0][2] == "1.0"
