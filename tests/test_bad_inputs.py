"""Bad configuration values and command-line inputs fail at start-up with an error that names the
key or file, the value and what is allowed (see also tests/data/test_dataset_corruptions.py and
tests/test_predict.py)."""
import importlib.util
import os
import re

import pytest

from crbp_detectron.config import ConfigError, load_config

from .training_utils import REPO

PATHFINDER_CRBP = os.path.join(REPO, "projects", "Pathfinder", "configs", "crbp.yaml")


@pytest.mark.parametrize("opts, message", [
    (["MODEL.CRBP.MASK_HEAD.OUTPUT_NORM", "XYZ"],
     r"MODEL.CRBP.MASK_HEAD.OUTPUT_NORM = 'XYZ': must be one of \('', 'BN', 'SyncBN', 'FrozenBN', 'GN'"),
    (["MODEL.CRBP.LCP_LAMBDA", 1.5], r"MODEL.CRBP.LCP_LAMBDA = 1.5: must be < 1 with PENALTY 'lcp'"),
    (["MODEL.CRBP.LCP_LAMBDA", 1.0], r"MODEL.CRBP.LCP_LAMBDA = 1.0: must be < 1 with PENALTY 'lcp'"),
    (["MODEL.CRBP.PENALTY_WEIGHT", float("inf")], r"MODEL.CRBP.PENALTY_WEIGHT = inf: must be a finite number"),
    (["MODEL.CRBP.TOL", 5.0], r"MODEL.CRBP.TOL = 5.0: must be < 1"),
    (["MODEL.CRBP.BACKWARD.TOL", 1.0], r"MODEL.CRBP.BACKWARD.TOL = 1.0: must be < 1"),
    (["MODEL.CRBP.STEPZ", 10], r"command line: unknown config key 'MODEL.CRBP.STEPZ'; did you mean MODEL.CRBP.STEPS"),
    (["MODEL.CRBP.CELL.NUM_GROUP", 8], r"unknown config key 'MODEL.CRBP.CELL.NUM_GROUP'; did you mean MODEL.CRBP.CELL.NUM_GROUPS"),
    (["MODEL.CRBP.LCP_LAMDA", 0.9], r"did you mean MODEL.CRBP.LCP_LAMBDA"),
    (["SOLVER.MAX_ITER", "many"], r"command line: Type mismatch .* for config key: SOLVER.MAX_ITER"),
    (["MODEL.CRBP.STEPS"], r"KEY VALUE pairs; got an odd number"),
    (["SOLVER.GRADIENT_GUARD.FACTOR", 0.5], r"SOLVER.GRADIENT_GUARD.FACTOR = 0.5: must be 0 \(off\) or > 1"),
    (["SOLVER.GRADIENT_GUARD.MIN_HISTORY", 80], r"SOLVER.GRADIENT_GUARD.MIN_HISTORY = 80: must be <= 50"),
])
def test_bad_config_value_is_named(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo/panoptic_crbp_demo.yaml", opts)


def test_lcp_lambda_above_one_is_fine_without_the_lcp():
    cfg = load_config("panoptic_crbp.yaml", ["MODEL.CRBP.PENALTY", "jacobian_frobenius", "MODEL.CRBP.LCP_LAMBDA", 1.5])
    assert cfg.MODEL.CRBP.LCP_LAMBDA == 1.5


def test_misspelt_key_in_a_config_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('_BASE_: "model_zoo:COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml"\n'
                    "MODEL:\n  CRBP:\n    PENALTY_WIEGHT: 0.01\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown config key 'MODEL.CRBP.PENALTY_WIEGHT'; did you mean "
                                          "MODEL.CRBP.PENALTY_WEIGHT"):
        load_config(str(path))


def test_a_project_config_names_its_tool(tmp_path):
    hint = (r"a project's config \(projects/\*, e.g. projects/Pathfinder\), not a Detectron2 model's: train it with "
            r"that project's train_net.py \(python projects/<Project>/train_net.py --config-file ")
    with pytest.raises(ConfigError, match=hint + re.escape(PATHFINDER_CRBP)):
        load_config(PATHFINDER_CRBP)
    path = tmp_path / "pathfinder.yaml"  # the Detectron2-style form, with its own PATHFINDER node
    path.write_text('MODEL:\n  META_ARCHITECTURE: "PathfinderModel"\nPATHFINDER:\n  DATA:\n    SIZE: 64\n')
    with pytest.raises(ConfigError, match=hint + re.escape(str(path))):
        load_config(str(path))


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net_tool", os.path.join(REPO, "tools", "train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def run(*argv):
        with pytest.raises(SystemExit) as info:
            tool.main(tool.parser().parse_args(list(argv)))
        return info.value.code
    return run


NO_DATA = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def test_train_net_refuses_a_pathfinder_config(train_net, capsys):
    assert train_net("--config-file", PATHFINDER_CRBP) == 2
    assert "projects/<Project>/train_net.py" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(b"\x00" + os.urandom(2999), "not a PyTorch checkpoint"),
                                              (None, "weights file not found")])
def test_train_net_names_a_bad_weights_file(train_net, tmp_path, capsys, content, message):
    weights = tmp_path / "weights.pth"
    if content is not None:
        weights.write_bytes(content)
    assert train_net("--config-file", "demo/panoptic_crbp_demo.yaml", "--eval-only",
                     *NO_DATA, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(weights)) == 2
    err = capsys.readouterr().err
    assert f"error: {weights}: " in err and message in err and "weights_only" not in err
