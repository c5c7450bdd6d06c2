"""torchrun, exiting as a preempted job should: 128 + the signal number.

    python -m crbp_detectron.torchrun --nproc_per_node 2 tools/train_net.py --config-file ... MODEL.DEVICE cpu

Same arguments and behaviour as `torchrun`. When a scheduler preempts the job with SIGTERM (to the
launcher, or to the whole process group), the workers save a checkpoint at the current iteration
and exit with 143; plain torchrun then exits with 1 (a SignalException, or a "failed" child), which
a scheduler reads as a crash rather than a preemption to requeue. This launcher exits 143 (130 for
SIGINT) in those cases and leaves every other exit as torchrun's.

torchrun waits 30 s for its workers after forwarding the signal, then kills them: a checkpoint that
takes longer is cut short, which the atomic checkpoints survive (the resume uses the previous one).
"""
import signal
import sys
from typing import Optional

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def preemption_exit_code(error: BaseException) -> Optional[int]:
    """128 + signal if `error` is torchrun ending on a preemption signal, else None."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(error, SignalException):
        return 128 + int(error.sigval) if error.sigval in PREEMPTION_SIGNALS else None
    if isinstance(error, ChildFailedError):
        # A worker that saved its checkpoint exits 128 + signal; one the signal ended exits -signal.
        signums = {f.exitcode - 128 if f.exitcode > 128 else -f.exitcode for f in error.failures.values()}
        if len(signums) == 1 and signums <= set(map(int, PREEMPTION_SIGNALS)):
            return 128 + signums.pop()
    return None


def main(argv=None):
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except Exception as error:
        code = preemption_exit_code(error)
        if code is None:
            raise
        print(f"crbp_detectron.torchrun: preempted ({signal.Signals(code - 128).name}); exit {code}",
              file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
