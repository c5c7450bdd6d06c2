import os

# Before anything loads OpenMP (torch): spinning OpenMP threads thrash on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_SAMPLE = os.path.join(os.path.dirname(REPO), "shared", "data", "coco_panoptic_val2017_sample")


@pytest.fixture(scope="session")
def coco_sample():
    """The two real COCO val2017 images with panoptic ground truth (read-only; never copied)."""
    if not os.path.isdir(COCO_SAMPLE):
        pytest.skip(f"COCO sample not found at {COCO_SAMPLE} (../shared/data beside the repository)")
    return COCO_SAMPLE


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """A small demo dataset (tests/training_utils.DEMO), generated and registered for the module
    (other modules register the demo names with other data)."""
    from crbp_detectron.data.demo import register_demo_datasets

    from .training_utils import DEMO

    root = str(tmp_path_factory.mktemp("demo"))
    register_demo_datasets(root, DEMO, progress=False)
    return root
