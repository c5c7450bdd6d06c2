"""Preemption handling cannot hang a run: the deferring SIGTERM handler never reaches a forked child
(panopticapi's PQ workers are pool workers that their pool ends with SIGTERM), and it is gone
before the end-of-training evaluation."""
import faulthandler
import json
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch

from crbp_detectron.config import load_config
from crbp_detectron.engine import Trainer
from crbp_detectron.engine.preemption import DeferredTermination, PreemptionHook

from .training_utils import tiny_opts, train


def _worker_pids(pool):
    return [p.pid for p in pool._pool]


def _mark_started_then_sleep(folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(120)


def test_busy_pool_worker_forked_under_the_handler_dies_on_its_pools_sigterm(tmp_path):
    hook = PreemptionHook()
    hook.before_train()  # the training loop's handler, as during a periodic evaluation
    pool = None
    try:
        assert signal.getsignal(signal.SIGTERM) == hook._termination._record
        pool = multiprocessing.get_context("fork").Pool(2)  # as panopticapi's pq_compute_multi_core
        pids = _worker_pids(pool)
        # Workers busy when their pool ends (an evaluation cut short, an interpreter exiting): only
        # SIGTERM can end them. (An idle worker would also leave on its pool's stop message.)
        for _ in pids:
            pool.apply_async(_mark_started_then_sleep, (str(tmp_path),))
        deadline = time.time() + 60
        while len(os.listdir(tmp_path)) < len(pids) and time.time() < deadline:
            time.sleep(0.05)
        assert sorted(map(int, os.listdir(tmp_path))) == sorted(pids)
        closer = threading.Thread(target=pool.terminate, daemon=True)  # SIGTERM to the workers, then join
        closer.start()
        closer.join(timeout=30)
        hung = closer.is_alive()
    finally:
        hook.restore_signals()
        if pool is not None:
            for pid in _worker_pids(pool):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not hung, f"pool workers {pids} survived SIGTERM: they inherited the deferring handler"
    assert hook._termination.received == 0  # the workers' SIGTERM is not the trainer's preemption
    assert signal.getsignal(signal.SIGTERM) is not hook._termination._record
    assert DeferredTermination.active is None


class RecordingTrainer(Trainer):
    """Records which SIGTERM handler is in place whenever the trainer evaluates."""

    handlers = []

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        cls.handlers.append(signal.getsignal(signal.SIGTERM))
        return super().test(cfg, model, evaluators)


def test_periodic_and_final_evaluation_finish_with_panoptic_quality(demo_root, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cfg = load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(
        tmp_path, SOLVER__MAX_ITER=2, TEST__EVAL_PERIOD=1, DATASETS__TEST="('crbp_demo_val_separated',)"))
    RecordingTrainer.handlers = []
    faulthandler.dump_traceback_later(600, exit=True)  # a hang fails the run instead of stalling it
    try:
        torch.manual_seed(0)
        trainer = RecordingTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        faulthandler.cancel_dump_traceback_later()
    # EVAL_PERIOD 1, 2 iterations: an evaluation inside the loop (after iteration 0), one at the end.
    assert len(RecordingTrainer.handlers) == 2
    assert RecordingTrainer.handlers[0] != before  # the loop's evaluation runs under the deferral ...
    assert RecordingTrainer.handlers[1] == before  # ... the final one after it has been restored
    assert 0 <= trainer._last_eval_results["panoptic_seg"]["PQ"] <= 100
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert sum("panoptic_seg/PQ" in r for r in rows) >= 1
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_handler_restored_after_preemption(demo_root, tmp_path, signum):
    from crbp_detectron.engine.preemption import Preempted

    from .training_utils import SignalAt

    before = signal.getsignal(signum)
    with pytest.raises(Preempted):
        train(load_config("demo/panoptic_crbp_demo.yaml", tiny_opts(tmp_path)), hooks=[SignalAt(1, signum)])
    assert signal.getsignal(signum) == before and DeferredTermination.active is None
