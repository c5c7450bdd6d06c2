"""tools/predict.py on real COCO images and odd inputs: valid outputs or a clear error."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from crbp_detectron.data.coco_panoptic import read_panoptic_png
from crbp_detectron.data.demo import DemoParams, register_demo_datasets

from .modeling.utils import tiny_demo_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def predict(tmp_path_factory):
    import importlib.util

    register_demo_datasets(str(tmp_path_factory.mktemp("demo")), DemoParams(train_images=2, val_images=2), progress=False)
    spec = importlib.util.spec_from_file_location("predict_tool", os.path.join(REPO, "tools", "predict.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.register_datasets = lambda cfg, **kwargs: None  # the tiny demo above, not the full one in the user's cache
    opts = tiny_demo_opts()

    def run(inputs, out, *extra):
        # The demo config with a tiny random model; the demo datasets registered above give the classes.
        return tool.main(["--config-file", "demo/panoptic_crbp_demo.yaml", "--input", *inputs, "--output", str(out),
                          *extra] + opts + ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"])
    return run


def _check_outputs(out, names_and_sizes):
    result = json.load(open(os.path.join(out, "predictions.json")))
    by_name = {a["file_name"]: a for a in result["annotations"]}
    for stem, (w, h) in names_and_sizes.items():
        assert os.path.isfile(os.path.join(out, stem + "_vis.png"))
        ids = read_panoptic_png(os.path.join(out, "panoptic", stem + ".png"))
        assert ids.shape == (h, w)
        segments = by_name[stem + ".png"]["segments_info"]
        assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}
        assert {s["category_id"] for s in segments} <= {c["id"] for c in result["categories"]}
    return result


def test_real_coco_images(predict, coco_sample, tmp_path):
    assert predict([os.path.join(coco_sample, "val2017")], tmp_path) == 0
    _check_outputs(tmp_path, {"000000142238": (640, 427), "000000439180": (640, 360)})


def test_odd_inputs(predict, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(inputs / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(inputs / "rgba.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(inputs / "one.png")
    Image.fromarray(rng.integers(0, 255, (12, 900, 3), dtype=np.uint8)).save(inputs / "wide.jpg")
    assert predict([str(inputs)], tmp_path / "out") == 0
    _check_outputs(tmp_path / "out", {"gray": (70, 50), "rgba": (60, 40), "one": (1, 1), "wide": (900, 12)})


def test_clear_errors(predict, tmp_path, capsys):
    wide = tmp_path / "too_wide.png"
    Image.fromarray(np.zeros((2, 4000, 3), np.uint8)).save(wide)
    assert predict([str(wide)], tmp_path / "out") == 2
    assert "too_wide.png: a 4000x2 image is too elongated" in capsys.readouterr().err
    assert predict([str(wide)], tmp_path / "skip", "--skip-bad-inputs") == 0
    assert "too elongated" in json.load(open(tmp_path / "skip" / "predictions.json"))["errors"][0]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert predict([str(tmp_path / "bad.jpg")], tmp_path / "out2") == 2
    assert "bad.jpg: not a readable image" in capsys.readouterr().err
    assert predict([str(tmp_path / "missing.png")], tmp_path / "out3") == 2
    assert "missing.png: file not found" in capsys.readouterr().err


def test_output_names_never_collide(predict, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "x.png").mkdir(parents=True)  # a sub-folder with an image's name: not an input
    (tmp_path / "other").mkdir()
    rng = np.random.default_rng(1)
    sizes = {"a.jpg": (40, 30), "a.png": (50, 20), "b.png": (30, 30)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(inputs / name)
    Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(tmp_path / "other" / "b.png")
    assert predict([str(inputs), str(inputs / "a.png"), str(tmp_path / "other" / "b.png")], tmp_path / "out") == 0
    assert f"note: {inputs / 'a.png'} is an input already given; it is predicted once" in capsys.readouterr().err
    result = _check_outputs(tmp_path / "out", {"a.jpg": (40, 30), "a.png": (50, 20), "in__b.png": (30, 30),
                                               "other__b.png": (36, 24)})
    by_input = {a["input"]: a["file_name"] for a in result["annotations"]}
    assert len(result["annotations"]) == 4 and len(set(by_input.values())) == 4
    assert by_input[str(tmp_path / "other" / "b.png")] == "other__b.png.png"


def test_output_names_are_stems_when_unique():
    from crbp_detectron.inference import output_names

    assert output_names(["d/a.jpg", "d/b.png", "e/c.tif"]) == ["a", "b", "c"]
    assert output_names(["d/a.jpg", "d/a.png", "d/a.jpg.png"]) == ["d__a.jpg", "a.png", "a.jpg.png"]
