#!/usr/bin/env python3
"""Install detectron2 v0.6 (pure-Python build) into the current interpreter.

detectron2 is not on PyPI. PyPI's ``pb1-detectron2==0.6`` is a source distribution of detectron2
v0.6's Python package *without* its C++/CUDA sources: its own setup.py cannot build, and it does
not package the model-zoo configs. This script

1. does nothing if a detectron2 with its compiled extension (``detectron2._C``) works, or if this
   build (same sdist, patch, stand-in and packaging: ``build_id()``) is already installed;
2. otherwise takes that sdist (cached under ``~/.cache/crbp_detectron/``, sha256-checked), applies
   ``detectron2_pure/detectron2-0.6-compat.patch`` (fixes for current NumPy, Pillow, setuptools and
   PyTorch; every hunk must apply), adds ``detectron2_pure/_C.py``, a stand-in for the compiled
   extension that raises a clear ``NotImplementedError`` for every compiled op, and pip-installs
   the result (``detectron2_pure/pyproject.toml``) as distribution ``detectron2 0.6+crbp.pure``,
   without dependencies: ``make setup`` installs those first, pinned with hashes, from
   ``requirements/setup.txt`` (panopticapi included). ``pip uninstall detectron2`` removes it.

Usage:  python tools/install_detectron2.py [--check] [--force] [--sdist PATH]
Exit status: 0 ok (``--check``: installed and current), 1 error (``--check``: not installed or
outdated), 2 bad usage.
"""
import argparse
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SDIST_URL = ("https://files.pythonhosted.org/packages/60/26/"
             "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/" + SDIST_FILENAME)
DIST_NAME, DIST_VERSION = "detectron2", "0.6+crbp.pure"

HERE = Path(__file__).resolve().parent / "detectron2_pure"
PATCH, STANDIN, PYPROJECT = HERE / "detectron2-0.6-compat.patch", HERE / "_C.py", HERE / "pyproject.toml"
# detectron2's setup.py installs these projects of the sdist as detectron2.projects.<name>.
PROJECTS = {"point_rend": "projects/PointRend/point_rend", "deeplab": "projects/DeepLab/deeplab",
            "panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab"}
PANOPTIC_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
# Builds of the former installer (its patches as Python string replacements) that installed the
# same detectron2 files (the patch reverse-applies to them) with the same stand-in behaviour.
EQUIVALENT_BUILDS = ("f3608d03b688133c",)
# Run in a subprocess after installing: the result must import, with its configs and projects.
VERIFY = """\
import os, detectron2, detectron2._C as C
assert getattr(C, "IS_STANDIN", False) and C.BUILD_ID == {build_id!r}, (
    "imported detectron2 is not the build just installed: " + detectron2.__file__)
import detectron2.data, detectron2.engine, detectron2.evaluation, detectron2.modeling
import detectron2.utils.visualizer, detectron2.projects.point_rend
import detectron2.projects.deeplab, detectron2.projects.panoptic_deeplab
from detectron2.model_zoo import get_config_file
assert os.path.isfile(get_config_file({config!r}))
import panopticapi.evaluation
print("verified: detectron2", detectron2.__version__, "at", os.path.dirname(detectron2.__file__))
"""


class InstallError(Exception):
    """A failure reported to the user as one line."""


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def build_id() -> str:
    """Fingerprint of everything that decides the installed tree."""
    h = hashlib.sha256(json.dumps([SDIST_SHA256, DIST_VERSION, PROJECTS]).encode())
    for f in (PATCH, STANDIN, PYPROJECT):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------- the current installation
def _dist_version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def detectron2_dir():
    """Where `import detectron2` loads from (without importing it), or None."""
    spec = importlib.util.find_spec("detectron2")
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def compiled_extension(d2_dir):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (d2_dir / f"_C{suffix}").is_file():
            return d2_dir / f"_C{suffix}"
    return None


def problems() -> list:
    """What is missing or outdated in this interpreter's detectron2 install ([] = current).
    Fast: imports neither torch nor detectron2."""
    out = [f"{n} not installed" for n in ("torch", "torchvision") if _dist_version(n) is None]
    d2_dir = detectron2_dir()
    if d2_dir is None:
        return out + ["detectron2 not installed"]
    version = _dist_version(DIST_NAME)
    if version != DIST_VERSION:
        out.append(f"installed detectron2 distribution is {version or 'none'}, not {DIST_VERSION}")
    else:
        recorded = Path(str(importlib.metadata.distribution(DIST_NAME).locate_file("detectron2")))
        if recorded.resolve() != d2_dir.resolve():
            out.append(f"`import detectron2` finds {d2_dir}, not the installed {recorded} (shadowed?)")
    c_py = d2_dir / "_C.py"
    found = re.search(r'^BUILD_ID = "(\w+)"', c_py.read_text(), re.M) if c_py.is_file() else None
    if not found or found.group(1) not in (build_id(), *EQUIVALENT_BUILDS):
        out.append(f"detectron2._C stand-in build {found.group(1) if found else 'missing'}, "
                   f"this installer builds {build_id()}")
    if not (d2_dir / "model_zoo" / "configs" / PANOPTIC_CONFIG).is_file():
        out.append("model-zoo configs missing")
    if not all((d2_dir / "projects" / name / "__init__.py").is_file() for name in PROJECTS):
        out.append("detectron2.projects.* missing")
    if importlib.util.find_spec("panopticapi") is None:
        out.append("panopticapi not installed (pip install --require-hashes --no-deps -r "
                   "requirements/setup.txt)")
    return out


def real_extension_works():
    """Imports detectron2._C in a subprocess: (True, path) if it is a real compiled extension."""
    code = ("import detectron2._C as C, importlib.machinery as m;"
            "assert not getattr(C, 'IS_STANDIN', False), 'stand-in';"
            "assert isinstance(C.__spec__.loader, m.ExtensionFileLoader), C.__file__;"
            "print(C.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = (proc.stdout if proc.returncode == 0 else proc.stderr or proc.stdout).strip().splitlines()
    return proc.returncode == 0, (lines[-1] if lines else f"exit status {proc.returncode}")


# ------------------------------------------------------------- the sdist
def cache_dir() -> Path:
    if os.environ.get("CRBP_CACHE_DIR"):
        return Path(os.environ["CRBP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crbp_detectron"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path, expected: str = SDIST_SHA256) -> None:
    got = sha256_of(path)
    if got != expected.lower():
        raise InstallError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} "
                           "(corrupt download or the file changed upstream; not using it)")


def obtain_sdist(local) -> Path:
    """The sha256-checked sdist: --sdist PATH, else the cached copy, else a download."""
    if local:
        if not Path(local).is_file():
            raise InstallError(f"--sdist {local}: no such file")
        verify_sha256(local)
        return Path(local)
    cached = cache_dir() / SDIST_FILENAME
    if cached.is_file():
        try:
            verify_sha256(cached)
            return cached
        except InstallError as e:
            log(f"discarding cached copy: {e}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_name(f"{cached.name}.part{os.getpid()}")
    log(f"downloading {SDIST_URL}")
    try:
        req = urllib.request.Request(SDIST_URL, headers={"User-Agent": "crbp-detectron-installer"})
        with urllib.request.urlopen(req, timeout=60) as r, open(part, "wb") as out:
            shutil.copyfileobj(r, out)
        verify_sha256(part)
    except (OSError, InstallError) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, InstallError):
            raise
        raise InstallError(f"cannot download {SDIST_URL}: {getattr(e, 'reason', None) or e} (check "
                           "access to files.pythonhosted.org, or pass --sdist PATH to a local copy)") from None
    os.replace(part, cached)
    return cached


# ------------------------------------------------------------- building the installable tree
def apply_patch(root: Path, patch: Path = PATCH) -> None:
    """Applies `patch` (-p1) inside `root`, all or nothing; fails naming the hunk that does not fit."""
    if shutil.which("git") is None:
        raise InstallError("git is needed to apply the detectron2 patch (`git apply`); install git")
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(root.parent))  # never a surrounding repo's
    for extra in (["--check"], []):
        proc = subprocess.run(["git", "apply", "-p1", *extra, str(patch)], cwd=root, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError(f"{patch.name} does not apply to the sources in {root}: "
                               f"{proc.stderr.strip()} (did the upstream source change?)")


def build_tree(sdist: Path, work: Path) -> Path:
    """Extracts `sdist` and lays out an installable project: detectron2/ (+ its projects),
    patched, with the stand-in _C.py, pyproject.toml and LICENSE."""
    with tarfile.open(sdist, "r:gz") as tar:
        tar.extractall(work / "src", filter="data")
    roots = [p for p in (work / "src").iterdir() if (p / "detectron2" / "__init__.py").is_file()]
    if len(roots) != 1:
        raise InstallError(f"{sdist} does not have the expected layout (<root>/detectron2/)")
    src, stage = roots[0], work / "stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(src / "detectron2", stage / "detectron2", ignore=ignore)
    for name, rel in PROJECTS.items():
        if not (src / rel / "__init__.py").is_file():
            raise InstallError(f"project {rel} missing from {sdist}")
        shutil.copytree(src / rel, stage / "detectron2" / "projects" / name, ignore=ignore)
    apply_patch(stage)
    (stage / "detectron2" / "_C.py").write_text(STANDIN.read_text().replace("@BUILD_ID@", build_id()))
    shutil.copy2(PYPROJECT, stage / "pyproject.toml")
    shutil.copy2(src / "LICENSE", stage / "LICENSE")
    return stage


# ------------------------------------------------------------- installing
def pip(args, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise InstallError(f"pip failed ({what}), exit status {rc}; see pip's output above")


def install(args) -> None:
    if _dist_version("torch") is None or _dist_version("torchvision") is None:
        raise InstallError(f"torch/torchvision are not installed in {sys.executable}; install them "
                           "first (pinned: torch==2.14.1 torchvision==0.29.1, e.g. `make setup`)")
    sdist = obtain_sdist(args.sdist)
    with tempfile.TemporaryDirectory(prefix="crbp-d2-") as tmp:
        stage = build_tree(sdist, Path(tmp))
        log(f"applied {PATCH.name}, added the detectron2._C stand-in (build {build_id()})")
        # Dependencies come pinned and hash-checked from requirements/setup.txt, not from here;
        # setuptools is the pinned one already installed (no isolated build that fetches another).
        pip(["--no-deps", "--force-reinstall", "--no-build-isolation", str(stage)],
            f"installing {DIST_NAME}=={DIST_VERSION}")
    importlib.invalidate_caches()
    proc = subprocess.run([sys.executable, "-c", VERIFY.format(build_id=build_id(), config=PANOPTIC_CONFIG)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise InstallError(f"installed, but the import check failed: {last} (are the dependencies "
                           "installed? pip install --require-hashes --no-deps -r requirements/setup.txt)")
    log(proc.stdout.strip())
    remaining = problems()
    if remaining:
        raise InstallError("installed, but still incomplete: " + "; ".join(remaining))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Install detectron2 0.6 (pure-Python build) into "
                                                 "this interpreter.")
    parser.add_argument("--check", action="store_true",
                        help="report the status; exit 0 if installed and current, else 1")
    parser.add_argument("--force", action="store_true",
                        help="reinstall even if installed (also replaces a compiled detectron2)")
    parser.add_argument("--sdist", metavar="PATH",
                        help=f"a local {SDIST_FILENAME} instead of a download (sha256 still checked)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        d2_dir = detectron2_dir()
        if d2_dir is not None and compiled_extension(d2_dir) and not args.force:
            ok, detail = real_extension_works()
            if ok:
                log(f"detectron2 with compiled ops already installed ({detail}); nothing to do")
                return 0
            raise InstallError(f"detectron2 at {d2_dir} has a compiled extension that does not "
                               f"import ({detail}); fix that build, or run with --force to replace "
                               "it by the pure-Python build")
        todo = problems()
        if not todo and not args.force:
            log(f"already installed: {DIST_NAME} {DIST_VERSION} (build {build_id()}) at {d2_dir}; "
                f"nothing to do ({time.monotonic() - t0:.2f}s)")
            return 0
        if args.check:
            log("not installed / outdated: " + "; ".join(todo))
            return 1
        install(args)
        log(f"done: installed {DIST_NAME} {DIST_VERSION} into {sys.prefix} ({time.monotonic() - t0:.0f}s)")
        return 0
    except InstallError as e:
        print(f"install_detectron2: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("install_detectron2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
