"""Checkpoints that survive a kill: atomic writes, a resume that falls back past a damaged file, and
load errors that say what is wrong with the file.

A checkpoint is written to a temporary name in the same folder, flushed to disk (fsync), then renamed
over the final name; `last_checkpoint` is rewritten the same way, only after that. A kill at any
moment leaves the previous files whole (at worst an orphaned temporary file, which the next run in
the folder removes). A folder without `last_checkpoint` (a kill between the first checkpoint's
rename and that write) resumes from its newest readable `model_*.pth`.
"""
import glob
import logging
import os
import re
import zipfile
from typing import Any, Callable, Dict, List, Optional

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger("detectron2.crbp")
TRAINING_CHECKPOINT = re.compile(r"model_\d{7}\.pth")
TEMPORARY_SUFFIX = ".partial"  # "<name>.pth.partial-<pid>": never matched by "*.pth"


class CheckpointError(ValueError):
    """A checkpoint or weights file cannot be read; the message names the file and why."""


def atomic_write(path: str, write: Callable, mode: str = "wb"):
    """Calls write(file) on a temporary file beside `path`, fsyncs it and renames it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}{TEMPORARY_SUFFIX}-{os.getpid()}"
    try:
        with open(temporary, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Removes the temporary files of `atomic_write` in `folder` whose writing process is gone (a
    write that was killed), logging each; a live process's write in progress is left alone.
    Returns the removed paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), f"*{TEMPORARY_SUFFIX}-*"))):
        pid = path.rsplit(f"{TEMPORARY_SUFFIX}-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except FileNotFoundError:  # another rank or run removed it first
            continue
        logger.warning("Removed %s (%.1f MB): a checkpoint write by process %s that was killed before it finished",
                       path, size / 2**20, pid)
        removed.append(path)
    return removed


def describe_not_weights(obj) -> Optional[str]:
    """Why a loaded object is not a checkpoint or state dict, or None if it is a dict."""
    if isinstance(obj, dict):
        return None
    what = f"a {type(obj).__name__}" + (f" of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else "")
    return (f"it holds {what}, not weights: a weights file holds a dict (a state dict of parameter names to "
            "tensors, or {'model': state dict} as tools/train_net.py writes it)")


def describe_unreadable(path: str, error: BaseException) -> str:
    """Why `path` is not a loadable checkpoint, in words, from what the file looks like."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes): an interrupted write or copy"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return (f"it is a truncated PyTorch checkpoint ({size} bytes: a zip archive without its end), "
                "from an interrupted write or copy")
    text = str(error)
    if "Weights only load failed" in text or "Unsupported global" in text:
        if zipfile.is_zipfile(path) or head[:1] == b"\x80":
            unsupported = [line.strip() for line in text.splitlines() if "Unsupported global" in line]
            what = unsupported[0] if unsupported else "objects other than tensors, numbers and strings"
            return (f"it holds Python objects that a safe load (torch.load(weights_only=True)) refuses: {what}. "
                    "Weights files must hold only tensors, numbers, strings, lists and dicts: re-save it as a "
                    "state dict, e.g. torch.save({'model': model.state_dict()}, path)")
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        return (f"it is not a PyTorch checkpoint ({size} bytes that are neither a torch.save zip archive nor "
                "a pickle); expected a .pth written by tools/train_net.py or torch.save, or a Detectron2 "
                "model-zoo .pkl")
    try:  # a readable file that holds something else than weights (torch.save(tensor))
        not_weights = describe_not_weights(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - unreadable in another way: reported below
        not_weights = None
    if not_weights:
        return not_weights
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _age_key(path: str):
    """Sort key, newest first when reversed: modification time, then name."""
    return os.path.getmtime(path), os.path.basename(path)


def check_weights_path(path: str):
    """A local weights path (MODEL.WEIGHTS, or a checkpoint to resume) must be an existing file."""
    if not path or "://" in path:
        return
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pkl")))
        example = f"; e.g. {os.path.join(path, inside[-1])}" if inside else ""
        raise CheckpointError(f"{path}: a folder, not a weights file (MODEL.WEIGHTS or the checkpoint to resume "
                              f"must name a .pth / .pkl file{example})")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: weights file not found (MODEL.WEIGHTS or the checkpoint to resume)")


class Checkpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer with atomic saves, a resume that skips damaged files, and
    clear errors for unreadable weights files."""

    last_saved: Optional[str] = None  # name of the latest checkpoint this process wrote
    # True: each save deletes the training checkpoint saved (or resumed from) before it, so the
    # folder holds what --resume needs and, once training is done, only model_final.pth.
    keep_only_latest: bool = False

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        previous = self.get_checkpoint_file() if self.keep_only_latest and self.has_checkpoint() else None
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
        self.last_saved = name
        if previous:
            self._delete_superseded(previous, path)

    def _delete_superseded(self, previous: str, latest: str):
        """Deletes `previous` once `latest` is written, if it is a training checkpoint of this folder
        (`model_<7 digits>.pth`, Detectron2's periodic and our preemption names): never the final
        model or other weights files."""
        previous = os.path.abspath(previous)
        if (previous != os.path.abspath(latest) and os.path.dirname(previous) == os.path.abspath(self.save_dir)
                and TRAINING_CHECKPOINT.fullmatch(os.path.basename(previous)) and os.path.isfile(previous)):
            os.remove(previous)

    def tag_last_checkpoint(self, last_filename_basename: str):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename), "w")

    def load(self, path: str, checkpointables=None):
        check_weights_path(path)
        return super().load(path, checkpointables)

    def _load_file(self, filename: str):
        preloaded = getattr(self, "_preloaded", None)
        if preloaded is not None and preloaded[0] == filename:
            self._preloaded = None
            return preloaded[1]
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # noqa: BLE001 - random bytes raise anything (IndexError, TypeError, ...)
            if not os.path.isfile(filename):
                raise
            raise CheckpointError(f"{filename}: cannot load it: {describe_unreadable(filename, e)}") from e
        not_weights = describe_not_weights(loaded.get("model"))
        if not_weights:  # e.g. torch.save([tensors]): Detectron2 wraps it as {"model": [...]}
            raise CheckpointError(f"{filename}: cannot load it: {not_weights}")
        return loaded

    def candidates(self) -> List[str]:
        """The checkpoint `last_checkpoint` names, then every other .pth of the folder, newest first;
        without `last_checkpoint`, the folder's model_*.pth (what training writes), newest first."""
        named = self.get_checkpoint_file() if self.has_checkpoint() else None
        pattern = "*.pth" if named else "model_*.pth"
        others = sorted((p for p in glob.glob(os.path.join(glob.escape(self.save_dir), pattern)) if p != named),
                        key=_age_key, reverse=True)
        return ([named] if named else []) + others

    def newest_readable_checkpoint(self) -> str:
        """The newest checkpoint that loads; each damaged one is reported and skipped."""
        tried = []
        for path in self.candidates():
            if not os.path.isfile(path):
                tried.append(f"{path}: not found")
                logger.warning("Checkpoint %s named by last_checkpoint is missing; trying the next newest", path)
                continue
            try:
                self._preloaded = (path, self._load_file(path))
            except CheckpointError as e:
                tried.append(str(e))
                logger.warning("%s; trying the next newest checkpoint", e)
                continue
            if tried:
                logger.warning("Resuming from %s, the newest readable checkpoint (skipped: %s)", path, "; ".join(tried))
            return path
        raise CheckpointError(f"{self.save_dir}: no readable checkpoint to resume from (tried: "
                              f"{'; '.join(tried) or 'none found'}). Remove last_checkpoint to start afresh.")

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.save_to_disk:
            remove_stale_temporaries(self.save_dir)
        if not (resume and self.candidates()):
            return self.load(path, checkpointables=[])
        chosen = self.newest_readable_checkpoint()
        if not self.has_checkpoint():
            logger.warning("%s has no last_checkpoint (the run was killed before writing it): resuming from %s, the "
                           "newest readable model_*.pth", self.save_dir, chosen)
            if self.save_to_disk:  # the trainer continues after it only if last_checkpoint names it
                self.tag_last_checkpoint(os.path.basename(chosen))
        choices = comm.all_gather(os.path.basename(chosen))  # also: every rank waits for that write
        if len(set(choices)) > 1:
            raise CheckpointError(f"{self.save_dir}: ranks would resume from different checkpoints {choices}; "
                                  "every rank must see the same output folder")
        return self.load(chosen)


class CheckpointedParts:
    """Mixin for a Detectron2 trainer (before it in the bases): the state of each part that
    `checkpointed_parts()` names is saved under that name beside the trainer's own state, as
    Detectron2's SimpleTrainer does for its optimizer. A checkpoint written before a part existed
    loads, leaving that part as it is."""

    def checkpointed_parts(self) -> Dict[str, Any]:
        """{key in the checkpoint: object with state_dict/load_state_dict}."""
        return {}

    def state_dict(self):
        state = super().state_dict()
        state.update({key: part.state_dict() for key, part in self.checkpointed_parts().items()})
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for key, part in self.checkpointed_parts().items():
            if key in state_dict:
                part.load_state_dict(state_dict[key])
