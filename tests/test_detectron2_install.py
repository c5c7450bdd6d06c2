"""Checks of the detectron2 installation made by tools/install_detectron2.py."""
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "tools" / "install_detectron2.py"
PANOPTIC_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


@pytest.fixture(scope="module")
def installer():
    """tools/install_detectron2.py imported as a module (it has no import-time effects)."""
    spec = importlib.util.spec_from_file_location("install_detectron2", INSTALLER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple needs its module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def d2_dir():
    import detectron2

    return Path(detectron2.__file__).parent


@pytest.fixture(scope="module")
def standin():
    """Skip where detectron2 was built from source with its compiled ops (the installer then
    leaves it alone, and there is no stand-in or patched tree to check)."""
    import detectron2._C as C

    if not getattr(C, "IS_STANDIN", False):
        pytest.skip("detectron2 with compiled ops is installed; stand-in checks do not apply")
    return C


def _assert_clear_error(excinfo, op):
    msg = str(excinfo.value)
    assert op in msg, msg
    assert "build detectron2 from source" in msg, msg
    assert "https://detectron2.readthedocs.io" in msg, msg


# (a)
def test_imports():
    import detectron2
    import detectron2.data  # noqa: F401
    import detectron2.engine  # noqa: F401
    import detectron2.evaluation  # noqa: F401
    import detectron2.export  # noqa: F401  (caffe2 parts are optional)
    import detectron2.modeling  # noqa: F401
    import detectron2.projects.deeplab  # noqa: F401
    import detectron2.projects.panoptic_deeplab  # noqa: F401
    import detectron2.projects.point_rend  # noqa: F401
    import detectron2.utils.visualizer  # noqa: F401
    import panopticapi.evaluation

    assert detectron2.__version__.startswith("0.6")
    assert callable(panopticapi.evaluation.pq_compute)


def test_installed_distribution(standin):
    assert importlib.metadata.version("detectron2") == "0.6+crbp.pure"


# (b)
def test_model_zoo_config_file():
    from detectron2.model_zoo import get_config_file

    path = get_config_file(PANOPTIC_CONFIG)
    assert os.path.isfile(path), path
    # Its _BASE_ must resolve too: the whole configs tree is package data.
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"


# (c)
def test_stand_in_marks_itself(standin):
    C = standin
    assert C.IS_STANDIN is True
    assert not hasattr(C, "__wrapped__")  # dunder probes get AttributeError, not an op error
    with pytest.raises(NotImplementedError) as e:
        C.some_future_op  # noqa: B018
    _assert_clear_error(e, "some_future_op")


def test_rotated_iou_raises_clear_error(standin):
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    with pytest.raises(NotImplementedError) as e:
        pairwise_iou_rotated(boxes, boxes)
    _assert_clear_error(e, "box_iou_rotated")


def test_rotated_roi_align_and_nms_raise_clear_error(standin):
    import torch
    from detectron2.layers import ROIAlignRotated, nms_rotated

    pool = ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    rois = torch.tensor([[0.0, 4.0, 4.0, 4.0, 4.0, 0.0]])
    with pytest.raises(NotImplementedError) as e:
        pool(torch.rand(1, 1, 8, 8), rois)
    _assert_clear_error(e, "roi_align_rotated_forward")
    with pytest.raises(NotImplementedError) as e:
        nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)
    _assert_clear_error(e, "nms_rotated")


def test_fast_cocoeval_raises_clear_error(standin):
    from pycocotools.coco import COCO

    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 32, "height": 32}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
             "iscrowd": 0}
        ],
    }
    gt.createIndex()
    dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9}])
    with pytest.raises(NotImplementedError) as e:
        COCOeval_opt(gt, dt, "bbox").evaluate()
    _assert_clear_error(e, "InstanceAnnotation")
    assert "use_fast_impl=False" in str(e.value)


def test_collect_env_reports_missing_ops(standin):
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert re.search(r"detectron2\._C\s+not built correctly: pure-Python stand-in", info), info


# (d)
def _record_state():
    state = {}
    for name in ("detectron2", "panopticapi-lite"):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files:
            p = Path(str(dist.locate_file(f)))
            if p.exists() and "__pycache__" not in p.parts:
                st = p.stat()
                state[str(p)] = (st.st_mtime_ns, st.st_size)
    return state


def test_second_run_is_a_fast_no_op():
    check = subprocess.run([sys.executable, str(INSTALLER), "--check"], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, "not installed or outdated (run `make setup`; this test never installs): " \
        + check.stdout + check.stderr
    before = _record_state()
    assert any(k.endswith("RECORD") for k in before)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(INSTALLER)], capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already installed" in proc.stdout, proc.stdout
    assert "] $ " not in proc.stdout  # the installer logs each pip command it runs like this
    assert elapsed < 5, f"no-op run took {elapsed:.1f}s"
    assert _record_state() == before


def test_check_flag_reports_installed():
    proc = subprocess.run(
        [sys.executable, str(INSTALLER), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already installed" in proc.stdout, proc.stdout


# (e)
def test_installed_tree_is_the_patched_one(installer, d2_dir, standin):
    """Every hunk of the committed patch is in the installed files: the patch reverse-applies."""
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(d2_dir.parent.parent))
    proc = subprocess.run(["git", "apply", "-p1", "--reverse", "--check", str(installer.PATCH)],
                          cwd=d2_dir.parent, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert standin.BUILD_ID in (installer.build_id(), *installer.EQUIVALENT_BUILDS)


# None of these may remain in the installed package (call sites the patch missed).
FORBIDDEN_AFTER_PATCH = (
    (re.compile(r"\bnp\.(int|float|str|bool|object|long|unicode|complex)\b(?!_)"),
     "a NumPy alias removed in NumPy>=1.24"),
    (re.compile(r"\bImage\.(LINEAR|ANTIALIAS|CUBIC)\b"), "a Pillow constant removed in Pillow 10"),
    (re.compile(r"\bpkg_resources\b"), "pkg_resources (not in setuptools>=81)"),
)


def test_no_removed_apis_left_in_installed_tree(d2_dir, standin):
    offenders = []
    for f in d2_dir.rglob("*.py"):
        text = f.read_text()
        if "np.bool)" in text or "np.bool\n" in text:
            offenders.append(f"{f}: np.bool")
        for pattern, what in FORBIDDEN_AFTER_PATCH:
            if pattern.search(text):
                offenders.append(f"{f}: {what}")
    assert not offenders, offenders


def test_patch_that_does_not_fit_fails_loudly(installer, tmp_path):
    target = tmp_path / "tree" / "detectron2" / "data"
    target.mkdir(parents=True)
    (target / "build.py").write_text("histogram = np.zeros((n,), dtype=np.int64)\n")  # changed upstream
    with pytest.raises(installer.InstallError, match=r"detectron2-0\.6-compat\.patch does not apply"):
        installer.apply_patch(tmp_path / "tree")


def test_every_locked_requirement_is_installed_at_its_pin():
    """`make setup` installs requirements/setup.txt exactly (no resolver: --no-deps)."""
    lock = (ROOT / "requirements" / "setup.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\]+) \\\n(?:    --hash=sha256:[0-9a-f]{64}.*\n)+", lock, re.M)
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9]", lock, re.M)) > 30  # each with its hashes
    wrong = [f"{name}=={pin} (installed: {_version(name)})" for name, pin in pins if _version(name) != pin]
    assert not wrong, wrong


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# (f)
def test_hash_mismatch_is_a_clear_error(installer, tmp_path):
    f = tmp_path / "pb1-detectron2-0.6.tar.gz"
    f.write_bytes(b"not the sdist")
    with pytest.raises(installer.InstallError) as e:
        installer.verify_sha256(f, installer.SDIST_SHA256)
    msg = str(e.value)
    assert "sha256 mismatch" in msg
    assert f"expected {installer.SDIST_SHA256}" in msg
    assert f"got {installer.sha256_of(f)}" in msg
    installer.verify_sha256(f, installer.sha256_of(f))  # the right hash passes
