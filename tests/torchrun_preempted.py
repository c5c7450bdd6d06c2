"""tools/train_net.py, with a hook that preempts the whole job like a scheduler: after iteration
PREEMPT_AT, rank 0 sends SIGTERM to its process group (torchrun's agent and every worker).
Run by tests/test_reliability.py under `python -m crbp_detectron.engine.launch`."""
import importlib.util
import os
import signal
import sys

from detectron2.engine import HookBase
from detectron2.utils import comm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREEMPT_AT = 2

spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
train_net = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_net)


class PreemptJob(HookBase):
    def after_step(self):
        if self.trainer.iter == PREEMPT_AT and comm.is_main_process():
            os.killpg(os.getpgid(0), signal.SIGTERM)


class PreemptedTrainer(train_net.Trainer):
    def build_hooks(self):
        return super().build_hooks() + [PreemptJob()]


if __name__ == "__main__":
    train_net.Trainer = PreemptedTrainer
    sys.argv[0] = train_net.__file__
    train_net.launch_from_args(train_net.main, train_net.parser().parse_args())
