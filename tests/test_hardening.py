"""Hardening against bad input: each input below, tried as a new user would, stops the tool with
one line `error: ...` naming the file or key, the value and what is allowed, exit status 2 and no
traceback, before a model is built where the input allows it. Then the runs that can always be
stopped (a second SIGINT/SIGTERM while a preemption waits for a blocked iteration) and the two
checkpoint cases (a folder without `last_checkpoint`, stale partial writes).

Other bad inputs: tests/test_bad_inputs.py (config values), tests/data/test_dataset_corruptions.py
(dataset files), tests/test_predict.py and tests/test_checkpoint.py (images, weights files)."""
import importlib.util
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
import torch

from crbp_detectron.config import load_config
from crbp_detectron.engine.preemption import Preempted

from .modeling.utils import tiny_demo_opts
from .training_utils import REPO, CapturedLog, SignalAt, tiny_opts, train

DEMO_CONFIG = "demo/panoptic_crbp_demo.yaml"
NO_DATA = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def write_png(path, width, height):
    """A valid all-black grayscale PNG of any size, written in a few hundred KB (zeros compress)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + pixels
    rows = [compressor.compress(row * min(500, height - y)) for y in range(0, height, 500)]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", b"".join(rows) + compressor.flush()) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- the cases
# Each case: (tmp_path, monkeypatch) -> (tool, arguments, the expected message after "error: ").
def empty_config_file(tmp, monkeypatch):
    path = tmp / "empty.yaml"
    path.write_text("")
    return "train_net", ["--config-file", str(path)], (
        f"{path}: the config file is empty; a config is a YAML mapping of KEY: value "
        '(e.g. _BASE_: "Base-CRBP-Panoptic-FPN.yaml" and the keys it changes)')


def base_cycle(tmp, monkeypatch):
    (tmp / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    return "train_net", ["--config-file", str(tmp / "a.yaml")], (
        f"{tmp / 'b.yaml'}: _BASE_ 'a.yaml' closes a cycle (a.yaml -> b.yaml -> a.yaml); a config cannot include itself")


def base_missing(tmp, monkeypatch):
    (tmp / "mine.yaml").write_text('_BASE_: "Base-Mine.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    return "train_net", ["--config-file", str(tmp / "mine.yaml")], (
        f"{tmp / 'mine.yaml'}: _BASE_ 'Base-Mine.yaml' not found (looked for {tmp / 'Base-Mine.yaml'})")


def output_dir_is_a_file(tmp, monkeypatch):
    (tmp / "out").write_text("a file")
    return "train_net", ["--config-file", DEMO_CONFIG, *NO_DATA, "OUTPUT_DIR", str(tmp / "out")], (
        f"OUTPUT_DIR = '{tmp / 'out'}': {tmp / 'out'} is a file, not a folder; OUTPUT_DIR must be a folder "
        "(created if missing)")


def demo_dir_is_a_file(tmp, monkeypatch):
    (tmp / "demo").write_text("a file")
    monkeypatch.setenv("CRBP_DEMO_DIR", str(tmp / "demo"))
    return "train_net", ["--config-file", DEMO_CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp / "out")], (
        f"CRBP_DEMO_DIR = '{tmp / 'demo'}': not a folder (a file is in the way); the demo data cache must be a "
        "folder, created if missing")


def damaged_demo_manifest(tmp, monkeypatch):
    (tmp / "demo").mkdir()
    (tmp / "demo" / "manifest.json").write_text('{"version": 4, "par')
    monkeypatch.setenv("CRBP_DEMO_DIR", str(tmp / "demo"))
    return "train_net", ["--config-file", DEMO_CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp / "out")], (
        f"{tmp / 'demo' / 'manifest.json'}: damaged demo dataset manifest (not valid JSON: Unterminated string "
        f"starting at: line 1 column 16 (char 15)); delete {tmp / 'demo'} to have the demo data generated again, "
        "or set CRBP_DEMO_DIR to another folder")


def steps_a_billion(tmp, monkeypatch):
    return "train_net", ["--config-file", DEMO_CONFIG, *NO_DATA, "MODEL.CRBP.STEPS", "1000000000"], (
        "Invalid config MODEL.CRBP.STEPS = 1000000000: must be <= 10000: each step is one more pass of the cell in "
        "every iteration (the paper used 20 on COCO and up to 300 on Pathfinder)")


def predict_decompression_bomb(tmp, monkeypatch):
    write_png(tmp / "huge.png", 16000, 12000)
    return "predict", ["--input", str(tmp / "huge.png")], (
        f"{tmp / 'huge.png'}: too large to decode (Image size (192000000 pixels) exceeds limit of 178956970 pixels, "
        "could be decompression bomb DOS attack.); downscale it")


def predict_output_is_a_file(tmp, monkeypatch):
    (tmp / "out").write_text("a file")
    (tmp / "in.png").write_bytes(b"")
    return "predict", ["--input", str(tmp / "in.png"), "--output", str(tmp / "out")], (
        f"--output = '{tmp / 'out'}': {tmp / 'out'} is a file, not a folder; --output must be a folder "
        "(created if missing)")


def _solver_value(key, value):
    def case(tmp, monkeypatch):
        return "train_net", ["--config-file", DEMO_CONFIG, *NO_DATA, key, value], (
            f"Invalid config {key} = {value}: must be >= {0 if key != 'SOLVER.IMS_PER_BATCH' else 1}")
    case.__name__ = f"{key}_{value}"
    return case


def misspelt_dataset(tmp, monkeypatch):
    return "train_net", ["--config-file", DEMO_CONFIG, *NO_DATA, "OUTPUT_DIR", str(tmp / "out"),
                         "DATASETS.TRAIN", "('coco_2017_train_panoptic_separted',)"], (
        "DATASETS.TRAIN = ('coco_2017_train_panoptic_separted',): 'coco_2017_train_panoptic_separted' is not a "
        "registered dataset; did you mean 'coco_2017_train_panoptic_separated'? (Detectron2's builtin names, the "
        "demo's crbp_demo_train_separated / crbp_demo_val_separated, or one registered in your code: "
        "datasets/README.md)")


def cuda_without_a_gpu(tmp, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return "train_net", ["--config-file", DEMO_CONFIG, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                         "MODEL.DEVICE", "cuda"], (
        "MODEL.DEVICE = 'cuda': no CUDA device is available here; add `MODEL.DEVICE cpu` to the command line to run "
        "on the CPU")


def weights_hold_a_tensor(tmp, monkeypatch):
    torch.save(torch.zeros(3, 4), tmp / "tensor.pth")
    return "train_net", ["--config-file", DEMO_CONFIG, "--eval-only", *NO_DATA, *tiny_demo_opts(),
                         "OUTPUT_DIR", str(tmp / "out"), "MODEL.WEIGHTS", str(tmp / "tensor.pth")], (
        f"{tmp / 'tensor.pth'}: cannot load it: it holds a Tensor of shape (3, 4), not weights: a weights file "
        "holds a dict (a state dict of parameter names to tensors, or {'model': state dict} as tools/train_net.py "
        "writes it)")


def weights_are_a_folder(tmp, monkeypatch):
    (tmp / "run").mkdir()
    (tmp / "run" / "model_final.pth").write_bytes(b"")
    return "train_net", ["--config-file", DEMO_CONFIG, "--eval-only", *NO_DATA, *tiny_demo_opts(),
                         "OUTPUT_DIR", str(tmp / "out"), "MODEL.WEIGHTS", str(tmp / "run")], (
        f"{tmp / 'run'}: a folder, not a weights file (MODEL.WEIGHTS or the checkpoint to resume must name a "
        f".pth / .pkl file; e.g. {tmp / 'run' / 'model_final.pth'})")


def group_given_a_value(tmp, monkeypatch):
    path = tmp / "mine.yaml"
    path.write_text('_BASE_: "model_zoo:COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml"\nMODEL: 5\n')
    return "train_net", ["--config-file", str(path)], (
        f"{path}: MODEL = 5: MODEL is a group of keys (MODEL.LOAD_PROPOSALS, ...), so its value must be a YAML "
        "mapping of them, not a single value")


CASES = [empty_config_file, base_cycle, base_missing, output_dir_is_a_file, demo_dir_is_a_file,
         damaged_demo_manifest, steps_a_billion, predict_decompression_bomb, predict_output_is_a_file,
         _solver_value("SOLVER.IMS_PER_BATCH", "0"), _solver_value("SOLVER.BASE_LR", "-0.1"),
         _solver_value("DATALOADER.NUM_WORKERS", "-1"), misspelt_dataset, cuda_without_a_gpu,
         weights_hold_a_tensor, weights_are_a_folder, group_given_a_value]


def _forget_logging_setup():
    """Detectron2's default_setup attaches handlers to the stdout of the moment (a test's capture,
    closed after it) once per process: each run in this process gets its own."""
    import logging

    from detectron2.utils.logger import setup_logger

    setup_logger.cache_clear()
    for name in ("detectron2", "fvcore", "d2"):
        logging.getLogger(name).handlers.clear()


@pytest.fixture(scope="module")
def tools(demo_root):
    """The tools, run in this process: exit status of `main`. predict runs a tiny random model on the
    demo's classes (the demo is registered by the fixture, not by the tool)."""
    train_net, predict = _tool("train_net"), _tool("predict")
    predict.register_datasets = lambda cfg, **kwargs: None

    def run(name, argv, tmp):
        _forget_logging_setup()
        try:
            return _run(name, argv, tmp)
        finally:
            _forget_logging_setup()

    def _run(name, argv, tmp):
        if name == "predict":
            argv = (["--config-file", DEMO_CONFIG] + (["--output", str(tmp / "predicted")] * ("--output" not in argv))
                    + argv + tiny_demo_opts())
            return predict.main(argv)
        try:
            train_net.main(train_net.parser().parse_args(argv))
        except SystemExit as e:
            return e.code
        return 0
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_error_with_exit_status_2(tools, case, tmp_path, monkeypatch, capfd):
    tool, argv, message = case(tmp_path, monkeypatch)
    status = tools(tool, argv, tmp_path)
    out, err = capfd.readouterr()
    assert status == 2
    assert err.splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in out + err


def test_nothing_built_or_written_before_a_config_error(tools, tmp_path, capfd):
    # Start-up errors come before the model and before OUTPUT_DIR is made.
    assert tools("train_net", ["--config-file", DEMO_CONFIG, *NO_DATA, "OUTPUT_DIR", str(tmp_path / "out"),
                               "SOLVER.IMS_PER_BATCH", "0"], tmp_path) == 2
    assert not (tmp_path / "out").exists()


def test_predictions_json_covers_the_images_done_before_a_bad_one(tools, tmp_path, capfd):
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "a.png")
    write_png(tmp_path / "b_huge.png", 16000, 12000)
    out = tmp_path / "predicted"
    assert tools("predict", ["--input", str(tmp_path / "a.png"), str(tmp_path / "b_huge.png")], tmp_path) == 2
    import json

    result = json.load(open(out / "predictions.json"))
    assert [a["input"] for a in result["annotations"]] == [str(tmp_path / "a.png")]
    assert result["errors"] == [f"{tmp_path / 'b_huge.png'}: too large to decode (Image size (192000000 pixels) "
                                "exceeds limit of 178956970 pixels, could be decompression bomb DOS attack.); "
                                "downscale it"]
    # --skip-bad-inputs: the bomb is skipped like any other bad input, and named.
    assert tools("predict", ["--skip-bad-inputs", "--input", str(tmp_path / "b_huge.png"), str(tmp_path / "a.png"),
                             "--output", str(tmp_path / "skipped")], tmp_path) == 0
    result = json.load(open(tmp_path / "skipped" / "predictions.json"))
    assert len(result["annotations"]) == 1 and "b_huge.png: too large to decode" in result["errors"][0]
    assert "1 inputs skipped" in capfd.readouterr().out


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "a.yaml").write_text('_BASE_: "a.yaml"\n')
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
                           str(tmp_path / "a.yaml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'a.yaml'}: _BASE_ 'a.yaml' closes a cycle (a.yaml -> a.yaml); a config cannot include "
        "itself")
    assert "Traceback" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- stopping a run
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_stops_a_blocked_iteration_at_once(tmp_path, signum):
    """A recurrent cell that blocks (sleeps) in the first iteration: the first signal is deferred
    until the iteration ends, which it never does; the second ends the run within seconds, exit
    128 + the signal, with a line that says no checkpoint was written."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "blocked_iteration.py"), str(tmp_path / "demo"),
         "--config-file", DEMO_CONFIG] + tiny_opts(tmp_path / "out"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def wait_for(text, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and not any(text in line for line in lines):
            time.sleep(0.05)
        return any(text in line for line in lines)

    name = signal.Signals(signum).name
    try:
        assert wait_for("cell blocking", 600), "".join(lines[-30:])
        proc.send_signal(signum)
        assert wait_for(f"{name} received: finishing iteration 0, then saving a checkpoint and stopping ({name} "
                        "again stops at once, without a checkpoint)", 30)
        time.sleep(1)
        assert proc.poll() is None  # deferred: the iteration has not finished
        sent = time.time()
        proc.send_signal(signum)
        proc.wait(timeout=30)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == 128 + signum and took < 5
    assert (f"{name} again while waiting for iteration 0 to finish: stopping now; no checkpoint was written for it "
            "(--resume continues from the latest checkpoint)\n") in lines
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".pth")]
    assert "Traceback" not in "".join(lines)


# --------------------------------------------------------------------------- checkpoint cases
def test_resume_without_last_checkpoint_uses_the_newest_readable_one(demo_root, tmp_path):
    """A kill between a checkpoint's rename and the first `last_checkpoint` write: --resume finds the
    checkpoint and says which, instead of starting again from iteration 0."""
    cfg = load_config(DEMO_CONFIG, tiny_opts(tmp_path))
    with pytest.raises(Preempted) as info:
        train(cfg, hooks=[SignalAt(2)])
    stopped = info.value.iteration
    os.remove(tmp_path / "last_checkpoint")
    with CapturedLog() as log:
        resumed = train(cfg, resume=True)
    assert resumed.start_iter == stopped + 1 and stopped >= 2
    assert (f"{tmp_path} has no last_checkpoint (the run was killed before writing it): resuming from "
            f"{tmp_path / f'model_{stopped:07d}.pth'}, the newest readable model_*.pth") in log.lines


def test_any_run_removes_stale_partial_writes_and_says_so(tools, tmp_path, capfd):
    """Temporary files of checkpoint writes that were killed (their process is gone) are removed by
    the next run in the folder, resumed or not; a live process's write in progress is kept."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"model_0000004.pth.partial-{dead.pid}"
    stale.write_bytes(b"PK" + bytes(3 * 2**20))
    live = out / f"model_0000009.pth.partial-{os.getppid()}"
    live.write_bytes(b"PK")
    assert tools("train_net", ["--config-file", DEMO_CONFIG, "--eval-only", *NO_DATA, *tiny_demo_opts(),
                               "OUTPUT_DIR", str(out)], tmp_path) == 0
    said = capfd.readouterr()
    assert not stale.exists() and live.exists()
    assert (f"Removed {stale} (3.0 MB): a checkpoint write by process {dead.pid} that was killed before it "
            "finished") in said.out + said.err
