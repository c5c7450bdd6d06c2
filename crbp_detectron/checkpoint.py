"""Checkpoints that survive a kill: atomic writes, a resume that falls back past a damaged file, and
load errors that say what is wrong with the file.

A checkpoint is written to a temporary name in the same folder, flushed to disk (fsync), then renamed
over the final name; `last_checkpoint` is rewritten the same way, only after that. A kill at any
moment leaves the previous files whole (at worst an orphaned temporary file, removed on resume).
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
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _age_key(path: str):
    """Sort key, newest first when reversed: modification time, then name."""
    return os.path.getmtime(path), os.path.basename(path)


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
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"{path}: weights file not found (MODEL.WEIGHTS or the checkpoint to resume)")
        return super().load(path, checkpointables)

    def _load_file(self, filename: str):
        preloaded = getattr(self, "_preloaded", None)
        if preloaded is not None and preloaded[0] == filename:
            self._preloaded = None
            return preloaded[1]
        try:
            return super()._load_file(filename)
        except Exception as e:  # noqa: BLE001 - random bytes raise anything (IndexError, TypeError, ...)
            if not os.path.isfile(filename):
                raise
            raise CheckpointError(f"{filename}: cannot load it: {describe_unreadable(filename, e)}") from e

    def candidates(self) -> List[str]:
        """The checkpoint `last_checkpoint` names, then every other .pth of the folder, newest first."""
        named = self.get_checkpoint_file()
        others = sorted((p for p in glob.glob(os.path.join(self.save_dir, "*.pth")) if p != named),
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

    def remove_orphaned_temporaries(self):
        for path in glob.glob(os.path.join(self.save_dir, f"*{TEMPORARY_SUFFIX}-*")):
            logger.warning("Removing %s, left by a checkpoint write that was killed", path)
            os.remove(path)

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        if self.save_to_disk:
            self.remove_orphaned_temporaries()
        chosen = self.newest_readable_checkpoint()
        choices = comm.all_gather(os.path.basename(chosen))
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
