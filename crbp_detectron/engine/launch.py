"""Launchers: `launch_from_args` (Detectron2's launcher, or the process group torchrun set up)
and torchrun itself, exiting as a preempted job should: 128 + the signal number.

    python -m crbp_detectron.engine.launch --nproc_per_node 2 tools/train_net.py --config-file ... MODEL.DEVICE cpu

Same arguments and behaviour as `torchrun`. When a scheduler preempts the job with SIGTERM (to the
launcher, or to the whole process group), the workers save a checkpoint at the current iteration
and exit with 143; plain torchrun then exits with 1 (a SignalException, or a "failed" child), which
a scheduler reads as a crash rather than a preemption to requeue. This launcher exits 143 (130 for
SIGINT) in those cases and leaves every other exit as torchrun's.

torchrun waits 30 s for its workers after forwarding the signal, then kills them: a checkpoint that
takes longer is cut short, which the atomic checkpoints survive (the resume uses the previous one).
"""
import os
import signal
import sys
from typing import Optional

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.engine import launch

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


def launch_from_args(main_func, args):
    """Runs `main_func(args)` in the distributed setting the command line or the environment asks
    for: under torchrun (WORLD_SIZE in the environment) it joins torchrun's process group (gloo
    on CPU, NCCL on GPUs) and sets Detectron2's per-machine group, as Detectron2's launcher does;
    otherwise Detectron2's launcher (--num-gpus/--num-machines/--dist-url) spawns the workers."""
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ:
        return launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))
    use_cuda = torch.cuda.is_available() and "cpu" not in [str(o).lower() for o in args.opts]
    backend = os.environ.get("CRBP_DIST_BACKEND", "nccl" if use_cuda else "gloo")
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    dist.init_process_group(backend=backend)
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after 0.6: its public API
        comm.create_local_process_group(local_size)
    else:  # Detectron2 0.6 creates the group inside its launcher only
        rank, world = dist.get_rank(), dist.get_world_size()
        machine = rank // local_size
        for m in range(world // local_size):  # every rank must create every group, in order
            group = dist.new_group(list(range(m * local_size, (m + 1) * local_size)))
            if m == machine:
                comm._LOCAL_PROCESS_GROUP = group
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        return main_func(args)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except Exception as error:
        code = preemption_exit_code(error)
        if code is None:
            raise
        print(f"crbp_detectron.engine.launch: preempted ({signal.Signals(code - 128).name}); exit {code}",
              file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
