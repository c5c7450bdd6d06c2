"""tools/train_net.py on a tiny demo dataset, with a recurrent cell that blocks in its first
training call (as an iteration with absurd settings would): it prints "cell blocking" and sleeps.
Run by tests/test_hardening.py, which signals it. Argument 1: the demo data folder; the rest:
train_net's arguments."""
import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import crbp_detectron.engine.defaults as engine  # noqa: E402
from crbp_detectron.crbp.cells import HGRUCell  # noqa: E402
from crbp_detectron.data.demo import register_demo_datasets  # noqa: E402
from tests.training_utils import DEMO  # noqa: E402

spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
train_net = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_net)


def blocking_forward(self, x, h):
    if self.training:
        print("cell blocking", file=sys.stderr, flush=True)
        time.sleep(3600)
    return original_forward(self, x, h)


if __name__ == "__main__":
    demo_dir = sys.argv.pop(1)
    engine.register_datasets = lambda cfg: register_demo_datasets(demo_dir, DEMO, progress=False)
    original_forward, HGRUCell.forward = HGRUCell.forward, blocking_forward
    sys.argv[0] = train_net.__file__
    train_net.launch_from_args(train_net.main, train_net.parser().parse_args())
