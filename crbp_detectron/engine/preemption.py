"""Preemption: SIGTERM/SIGINT during training finishes the current iteration, saves a checkpoint at
it and stops with `Preempted` (the tools exit with 128 + the signal number). A second one while
the first waits for the iteration to end stops the process at once (exit 128 + the signal number,
no checkpoint for the current iteration, a line that says so): a run can always be stopped, even
when an iteration takes far too long.

The deferring handler is scoped to the training loop: it is restored before the end-of-training
work (final evaluation) and it never survives into a forked child. A child that inherited it would
ignore the SIGTERM with which its pool ends it (panopticapi's PQ workers, multiprocessing pools in
evaluators) and hang the run; `os.register_at_fork` puts the previous handlers back in every child.
"""
import os
import signal
import sys
from typing import Callable, Dict, Optional

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.engine import HookBase

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(KeyboardInterrupt):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint. A KeyboardInterrupt, so that
    Detectron2's after-train hooks do not treat it as the end of training."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at iteration {iteration}: checkpoint saved to "
                         f"{checkpoint}; continue with --resume")


class DeferredTermination:
    """Installs handlers that only record SIGTERM/SIGINT, until `restore()`. At most one is active
    in a process; forked children get the previous handlers back (see the module docstring)."""

    active: Optional["DeferredTermination"] = None

    def __init__(self, progress: Optional[Callable[[], str]] = None):
        """progress(): where the run is, for the lines printed on a signal ("iteration 12")."""
        self.received = 0
        self._owner_pid = None
        self._previous: Dict[int, object] = {}
        self._progress = progress or (lambda: "the current iteration")

    def _record(self, signum, frame):
        if os.getpid() != self._owner_pid:  # a child that got here before its at-fork reset
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name, where = signal.Signals(signum).name, self._where()
        if self.received:
            _say(f"{name} again while waiting for {where} to finish: stopping now; no checkpoint was "
                 "written for it (--resume continues from the latest checkpoint)")
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - interrupted in the middle of a write
                    pass
            os._exit(128 + signum)
        self.received = signum
        _say(f"{name} received: finishing {where}, then saving a checkpoint and stopping "
             f"({name} again stops at once, without a checkpoint)")

    def _where(self) -> str:
        try:
            return self._progress()
        except Exception:  # noqa: BLE001 - a trainer already gone: still stop
            return "the current iteration"

    def install(self):
        self._owner_pid = os.getpid()
        if DeferredTermination.active is not None:
            raise RuntimeError("SIGTERM/SIGINT are already deferred by another training loop in this process")
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        DeferredTermination.active = self

    def restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if DeferredTermination.active is self:
            DeferredTermination.active = None

    @staticmethod
    def _restore_in_forked_child():
        deferral = DeferredTermination.active
        if deferral is None:
            return
        try:
            deferral.restore()
        except ValueError:  # forked from a thread that is not the child's main thread
            pass
        DeferredTermination.active = None


os.register_at_fork(after_in_child=DeferredTermination._restore_in_forked_child)


class PreemptionHook(HookBase):
    """Defers SIGTERM/SIGINT while training runs; after the step in which one arrived (on any
    rank: all ranks agree on the iteration), saves a checkpoint at it and raises `Preempted`.
    Put it after the LR scheduler and the periodic checkpointer: its checkpoint then holds the same
    state as a periodic one. `before_checkpoint` is called on every rank just before the save (the
    trainer gathers the per-rank state that the checkpoint needs there)."""

    def __init__(self, before_checkpoint: Optional[Callable[[], None]] = None):
        self._termination = DeferredTermination(progress=lambda: f"iteration {self.trainer.iter}")
        self._before_checkpoint = before_checkpoint

    def before_train(self):
        self._termination.install()

    def restore_signals(self):
        """Ends the deferral (the trainer calls it as the loop ends, before any after-train work)."""
        self._termination.restore()

    def after_train(self):
        self.restore_signals()

    def after_step(self):
        received = torch.tensor(float(self._termination.received))
        if comm.get_world_size() > 1:
            dist.all_reduce(received, op=dist.ReduceOp.MAX)
        if received.item() == 0:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        if self._before_checkpoint is not None:
            self._before_checkpoint()
        checkpointer = self.trainer.checkpointer
        if getattr(checkpointer, "last_saved", None) != name:  # the periodic checkpointer may have saved it
            checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        raise Preempted(int(received.item()), iteration, os.path.join(self.trainer.cfg.OUTPUT_DIR, name + ".pth"))


def _say(line: str):
    """One line to stderr from a signal handler (unbuffered: the handler may have interrupted a
    buffered write)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


def ignore_termination_in_worker(worker_id: int):
    """worker_init_fn of the training data workers. A preemption's SIGTERM reaches the whole process
    group; PyTorch's data workers die on it, which crashes the main process before it can
    checkpoint. Ours ignore it, and end when the main process shuts the loader down."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
