#!/usr/bin/env python3
"""Install detectron2 (v0.6, pure-Python build) into the current interpreter.

detectron2 is not on PyPI. PyPI's ``pb1-detectron2==0.6`` is a source distribution of
detectron2 v0.6's Python package *without* its C++/CUDA sources; its own setup.py cannot
build, and it does not package the model-zoo configs. This script:

1. does nothing if a detectron2 with its compiled extension (``detectron2._C``) is
   already importable;
2. otherwise downloads that sdist (PEP 691 simple index, pinned sha256, cached under
   ``~/.cache/crbp_detectron/``), applies the small compatibility patches of ``PATCHES``
   (each must match exactly, or the script fails), adds a pure-Python stand-in for
   ``detectron2._C`` that raises a clear ``NotImplementedError`` for every compiled op,
   and pip-installs the result with a generated setup.py as distribution ``detectron2``,
   version ``DIST_VERSION``, together with detectron2's runtime dependencies
   (``REQUIREMENTS``, declared as its Requires-Dist) and ``panopticapi`` (from
   ``panopticapi-lite``).

A second run finds the same build (``BUILD_ID``) and exits at once. ``pip uninstall
detectron2`` removes it.

Usage:  python tools/install_detectron2.py [--check | --dry-run] [--force] [--sdist PATH]
Exit status: 0 ok (``--check``: installed and current), 1 error (``--check``: not installed
or outdated), 2 bad usage.
"""
from __future__ import annotations

import argparse
import contextlib
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------------------
# Pins
# ---------------------------------------------------------------------------------------
SDIST_PROJECT = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SDIST_PINNED_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
)
PYPI_SIMPLE_URL = "https://pypi.org/simple/{project}/"
NETWORK_TIMEOUT_S = 60

DIST_NAME = "detectron2"
DIST_VERSION = "0.6+crbp.pure"

# detectron2 0.6's install_requires, with pins that work on Python 3.11 / NumPy 2 / torch 2.x.
# Left out: black (only LazyConfig.to_py formatting), future/pydot (caffe2 export only).
# torch/torchvision are not declared (as upstream): they must be installed first, at the
# versions the project pins, and a bare requirement could pull an unrelated build.
REQUIREMENTS: Tuple[str, ...] = (
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.8",  # >=2.0.8: first release with wheels built against NumPy 2
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore==0.1.5.post20221221",  # requires iopath>=0.1.7
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "pyyaml>=5.1",  # detectron2 imports yaml directly
    "numpy",
)
# OpenCV is installed (if no OpenCV distribution is present) but not declared in
# Requires-Dist: as upstream notes, users may have opencv-python/-contrib instead, and two
# OpenCV distributions in one environment overwrite each other's cv2 package.
OPENCV_REQUIREMENT = "opencv-python-headless"
OPENCV_DISTS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
# panopticapi: panopticapi-lite ships the official `panopticapi` package; its `numpy<2`
# pin is not needed by its code, so it is installed with --no-deps plus its real deps.
PANOPTICAPI_REQUIREMENT = "panopticapi-lite==0.2.0"
PANOPTICAPI_DEPS = ("numpy", "Pillow")

# detectron2's setup.py installs these projects as detectron2.projects.<name>.
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}
PANOPTIC_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
INSTALL_DOCS_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"


class InstallError(Exception):
    """A failure reported to the user as one line."""


# ---------------------------------------------------------------------------------------
# Compatibility patches: (file relative to the package dir `detectron2/`, exact old text,
# new text, expected number of occurrences, reason). A mismatch in count fails the install.
# ---------------------------------------------------------------------------------------
class Patch(NamedTuple):
    path: str
    old: str
    new: str
    count: int
    reason: str


_NP_ALIAS = "NumPy>=1.24 removed the np.int/np.float/np.str aliases of the builtins"
_NP_BOOL = "NumPy 1.24-1.26 has no np.bool alias (NumPy 2 brings it back)"

PATCHES: Tuple[Patch, ...] = (
    Patch("evaluation/sem_seg_evaluation.py", "dtype=np.int)", "dtype=int)", 2, _NP_ALIAS),
    Patch("evaluation/sem_seg_evaluation.py", "dtype=np.float)", "dtype=float)", 2, _NP_ALIAS),
    Patch("evaluation/sem_seg_evaluation.py", "astype(np.float)", "astype(float)", 3, _NP_ALIAS),
    Patch("data/build.py", "(num_classes,), dtype=np.int)", "(num_classes,), dtype=int)", 1,
          _NP_ALIAS),
    Patch("data/build.py", 'x.get("iscrowd", 0)], dtype=np.int\n',
          'x.get("iscrowd", 0)], dtype=int\n', 1, _NP_ALIAS),
    Patch("data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)", 1, _NP_ALIAS),
    Patch("structures/masks.py", "astype(np.bool)", "astype(bool)", 2, _NP_BOOL),
    Patch("structures/masks.py", "dtype=np.bool)", "dtype=bool)", 1, _NP_BOOL),
    Patch("utils/visualizer.py", "astype(np.bool)", "astype(bool)", 3, _NP_BOOL),
    Patch("utils/video_visualizer.py", "dtype=np.bool)", "dtype=bool)", 1, _NP_BOOL),
    Patch("evaluation/pascal_voc_evaluation.py", "astype(np.bool)", "astype(bool)", 2,
          _NP_BOOL),
    Patch("data/transforms/transform.py", "interp=Image.LINEAR,", "interp=Image.BILINEAR,", 1,
          "Pillow>=10 removed Image.LINEAR (an alias of BILINEAR); `import detectron2.data` "
          "fails on it"),
    Patch("model_zoo/model_zoo.py", "import pkg_resources\n", "", 1,
          "setuptools>=81 no longer ships pkg_resources"),
    Patch("model_zoo/model_zoo.py",
          'cfg_file = pkg_resources.resource_filename(\n'
          '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
          '    )\n',
          'cfg_file = os.path.join(\n'
          '        os.path.dirname(os.path.abspath(__file__)), "configs", config_path\n'
          '    )\n',
          1, "setuptools>=81 no longer ships pkg_resources: configs are package data next "
             "to this module"),
    Patch("utils/collect_env.py",
          "        import detectron2._C as _C\n    except ImportError as e:\n",
          "        import detectron2._C as _C\n\n"
          '        if getattr(_C, "IS_STANDIN", False):  # crbp-detectron pure-Python build\n'
          "            raise ImportError(_C.SUMMARY)\n"
          "    except ImportError as e:\n",
          1, "collect_env_info() (used by default_setup) calls _C.get_compiler_version(); "
             "with the stand-in it must report the missing compiled ops instead"),
    Patch("layers/nms.py",
          "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)\n",
          "    from detectron2 import _C\n\n"
          '    if getattr(_C, "IS_STANDIN", False):  # crbp-detectron pure-Python build\n'
          '        _C.__getattr__("nms_rotated")  # raises the clear NotImplementedError\n'
          "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)\n",
          1, "nms_rotated is registered by the compiled extension (torch.ops.detectron2); "
             "without it torch raises an obscure error, the stand-in a clear one"),
    Patch("engine/defaults.py",
          '    if "device_ids" not in kwargs:\n',
          '    if "device_ids" not in kwargs and any(p.is_cuda for p in model.parameters()):\n',
          1, "create_ddp_model always passed device_ids=[local rank]; DistributedDataParallel "
             "refuses device_ids for a CPU model, so multi-process CPU training (torchrun, gloo) "
             "failed: pass them only for a CUDA model"),
    Patch("export/__init__.py", "from .api import *\n",
          "try:\n"
          "    from caffe2.proto import caffe2_pb2 as _tmp  # noqa: F401  caffe2 is optional\n"
          "except ImportError:  # crbp-detectron: torch>=2.0 no longer ships caffe2\n"
          "    pass\n"
          "else:\n"
          "    from .api import *\n",
          1, "torch>=2.0 has no caffe2: `import detectron2.export` (and so "
             "detectron2.utils.analysis, the FLOP counter) failed; the Caffe2 export API is "
             "now optional, as in later upstream detectron2"),
)

# After patching, none of these may remain anywhere in the package (catches new call sites).
FORBIDDEN_AFTER_PATCH = (
    (re.compile(r"\bnp\.(int|float|str|bool|object|long|unicode|complex)\b(?!_)"),
     "a NumPy alias removed in NumPy>=1.24"),
    (re.compile(r"\bImage\.(LINEAR|ANTIALIAS|CUBIC)\b"), "a Pillow constant removed in Pillow 10"),
    (re.compile(r"\bpkg_resources\b"), "pkg_resources (not in setuptools>=81)"),
)

# Ops provided by detectron2 0.6's compiled extension (for documentation; any other name
# asked of the stand-in raises the same error).
COMPILED_OPS = (
    "deform_conv_forward", "deform_conv_backward_input", "deform_conv_backward_filter",
    "modulated_deform_conv_forward", "modulated_deform_conv_backward",
    "roi_align_rotated_forward", "roi_align_rotated_backward", "box_iou_rotated",
    "nms_rotated", "InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate",
    "get_compiler_version", "get_cuda_version", "has_cuda",
)

STANDIN_TEMPLATE = '''\
"""Pure-Python stand-in for detectron2's compiled extension ``detectron2._C``.

Generated by crbp-detectron's tools/install_detectron2.py: this detectron2 was installed
from the pure-Python sources, without detectron2's C++/CUDA extension. Everything that does
not need a compiled op works (e.g. Panoptic FPN: it uses torchvision's RoIAlign and NMS).
Asking this module for a compiled op raises ``CompiledOpUnavailableError`` (a
``NotImplementedError``) that names the op. To get the ops, build detectron2 from source
with its C++/CUDA extension: {docs_url}
"""

IS_STANDIN = True
BUILD_ID = "{build_id}"
INSTALL_DOCS_URL = "{docs_url}"
COMPILED_OPS = {ops!r}
SUMMARY = (
    "pure-Python stand-in, no compiled C++/CUDA ops ({ops_short}); "
    "build detectron2 from source to get them: {docs_url}"
)
_COCOEVAL_OPS = ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate")


class CompiledOpUnavailableError(NotImplementedError):
    """A compiled detectron2 op was requested from the pure-Python stand-in."""


def _message(name):
    msg = (
        "detectron2._C.%s is not available: this detectron2 is a pure-Python build, "
        "installed without detectron2's compiled C++/CUDA extension, so the op %r "
        "cannot run. To use it, build detectron2 from source with its C++/CUDA extension "
        "(see %s)." % (name, name, INSTALL_DOCS_URL)
    )
    if name in _COCOEVAL_OPS:
        msg += " For COCO evaluation without it, use COCOEvaluator(..., use_fast_impl=False)."
    else:
        msg += " (For COCO evaluation, use COCOEvaluator(..., use_fast_impl=False).)"
    return msg


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    raise CompiledOpUnavailableError(_message(name))


def __dir__():
    return sorted(["IS_STANDIN", "BUILD_ID", "INSTALL_DOCS_URL", "COMPILED_OPS", "SUMMARY",
                   "CompiledOpUnavailableError"])
'''

SETUP_PY_TEMPLATE = '''\
# Generated by crbp-detectron's tools/install_detectron2.py (not detectron2's own setup.py):
# packages the pure-Python detectron2 {sdist_version} sources, its projects and model-zoo configs.
import os

from setuptools import setup


def _packages():
    found = []
    for root, dirs, files in os.walk("detectron2"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and d != "configs")
        if "__init__.py" in files:
            found.append(root.replace(os.sep, "."))
    return sorted(found)


def _model_zoo_configs():
    base = os.path.join("detectron2", "model_zoo")
    out = []
    for root, dirs, files in os.walk(os.path.join(base, "configs")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".yaml", ".py")):
                out.append(os.path.relpath(os.path.join(root, name), base))
    return sorted(out)


setup(
    name={name!r},
    version={version!r},
    description="detectron2 {sdist_version} (pure-Python build without the C++/CUDA ops, "
    "patched for current NumPy/Pillow/setuptools; built by crbp-detectron)",
    url="https://github.com/facebookresearch/detectron2",
    author="FAIR",
    python_requires=">=3.8",
    packages=_packages(),
    package_data={{"detectron2.model_zoo": _model_zoo_configs()}},
    include_package_data=False,
    zip_safe=False,
    install_requires={requirements!r},
)
'''

PYPROJECT_TOML = """\
# Generated by crbp-detectron's tools/install_detectron2.py.
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
"""

# Run (in a subprocess) after installing, to prove the result imports.
VERIFY_SNIPPET = """\
import os, sys
import detectron2, detectron2._C as C
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


def _fingerprint() -> str:
    payload = json.dumps(
        {
            "sdist": SDIST_SHA256,
            "version": DIST_VERSION,
            "patches": [tuple(p) for p in PATCHES],
            "forbidden": [p.pattern for p, _ in FORBIDDEN_AFTER_PATCH],
            "standin": STANDIN_TEMPLATE,
            "setup": SETUP_PY_TEMPLATE,
            "requirements": REQUIREMENTS,
            "projects": PROJECTS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


BUILD_ID = _fingerprint()


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Inspecting the current installation (fast: imports neither detectron2 nor torch)
# ---------------------------------------------------------------------------------------
def _load_packaging():
    try:
        from packaging.requirements import Requirement  # type: ignore
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement  # type: ignore
        except ImportError:
            return None
    return Requirement


def _dist_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _req_name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", text, maxsplit=1)[0]).lower()


def unsatisfied(requirements: Sequence[str]) -> List[str]:
    """Requirements from `requirements` that are not installed at a matching version."""
    Requirement = _load_packaging()
    missing = []
    for text in requirements:
        if Requirement is None:
            if _dist_version(_req_name(text)) is None:
                missing.append(text)
            continue
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = _dist_version(req.name)
        if installed is None or not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (installed: {installed or 'none'})")
    return missing


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


class Status(NamedTuple):
    d2_dir: Optional[Path]          # where `import detectron2` would load from
    d2_dist_version: Optional[str]  # version of the installed `detectron2` distribution
    d2_dist_dir: Optional[Path]     # package dir recorded by that distribution
    compiled_ext: Optional[Path]    # a real detectron2._C extension module file, if any
    standin_build: Optional[str]    # BUILD_ID in our stand-in _C.py, if any
    configs_ok: bool
    projects_ok: bool
    missing_deps: Tuple[str, ...]
    panopticapi: Optional[Path]
    torch_ok: bool

    @property
    def current(self) -> bool:
        return not self.problems()

    def problems(self) -> List[str]:
        out = []
        if not self.torch_ok:
            out.append("torch/torchvision not installed")
        if self.d2_dir is None:
            out.append("detectron2 not installed")
            return out + self._rest()
        if self.d2_dist_version != DIST_VERSION:
            out.append(f"installed detectron2 distribution is {self.d2_dist_version or 'none'}, "
                       f"not {DIST_VERSION}")
        elif self.d2_dist_dir is not None and self.d2_dist_dir.resolve() != self.d2_dir.resolve():
            out.append(f"`import detectron2` finds {self.d2_dir}, not the installed "
                       f"distribution's {self.d2_dist_dir} (shadowed by another copy?)")
        if self.standin_build != BUILD_ID:
            out.append(f"detectron2._C stand-in build {self.standin_build or 'missing'}, "
                       f"this installer builds {BUILD_ID}")
        if not self.configs_ok:
            out.append("model-zoo configs missing")
        if not self.projects_ok:
            out.append("detectron2.projects.* missing")
        return out + self._rest()

    def _rest(self) -> List[str]:
        out = [f"missing dependency {d}" for d in self.missing_deps]
        if self.panopticapi is None:
            out.append("panopticapi not installed")
        return out


def inspect_installation() -> Status:
    spec = _find_spec("detectron2")
    d2_dir = None
    if spec is not None and spec.submodule_search_locations:
        d2_dir = Path(list(spec.submodule_search_locations)[0])
    dist_version = dist_dir = None
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
        dist_version = dist.version
        dist_dir = Path(str(dist.locate_file("detectron2")))
    except importlib.metadata.PackageNotFoundError:
        pass
    compiled = standin = None
    configs_ok = projects_ok = False
    if d2_dir is not None:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (d2_dir / f"_C{suffix}").is_file():
                compiled = d2_dir / f"_C{suffix}"
                break
        c_py = d2_dir / "_C.py"
        if c_py.is_file():
            text = c_py.read_text(errors="replace")
            m = re.search(r'^BUILD_ID = "([0-9a-f]+)"$', text, re.M)
            if re.search(r"^IS_STANDIN = True$", text, re.M) and m:
                standin = m.group(1)
        configs_ok = (d2_dir / "model_zoo" / "configs" / PANOPTIC_CONFIG).is_file()
        projects_ok = all(
            (d2_dir / "projects" / mod.rsplit(".", 1)[1] / "__init__.py").is_file()
            for mod in PROJECTS
        )
    pan = _find_spec("panopticapi.evaluation")
    deps = list(REQUIREMENTS)
    if not any(_dist_version(n) for n in OPENCV_DISTS):
        deps.append(OPENCV_REQUIREMENT)
    return Status(
        d2_dir=d2_dir,
        d2_dist_version=dist_version,
        d2_dist_dir=dist_dir,
        compiled_ext=compiled,
        standin_build=standin,
        configs_ok=configs_ok,
        projects_ok=projects_ok,
        missing_deps=tuple(unsatisfied(deps)),
        panopticapi=Path(pan.origin) if pan is not None and pan.origin else None,
        torch_ok=_dist_version("torch") is not None and _dist_version("torchvision") is not None,
    )


def real_extension_works() -> Tuple[bool, str]:
    """Import detectron2._C in a subprocess; True if it is a real (compiled) extension."""
    code = (
        "import detectron2._C as C, importlib.machinery as m;"
        "assert not getattr(C, 'IS_STANDIN', False), 'stand-in';"
        "assert isinstance(C.__spec__.loader, m.ExtensionFileLoader), C.__file__;"
        "print(C.__file__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return False, lines[-1] if lines else f"exit status {proc.returncode}"


# ---------------------------------------------------------------------------------------
# Download and verification
# ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    if os.environ.get("CRBP_CACHE_DIR"):
        return Path(os.environ["CRBP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crbp_detectron"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path, expected: str = SDIST_SHA256) -> None:
    got = sha256_of(Path(path))
    if got != expected.lower():
        raise InstallError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} "
            "(corrupt download or the file changed upstream; not using it)"
        )


def _http_get(url: str, headers: Optional[Dict[str, str]] = None):
    req = urllib.request.Request(url, headers={"User-Agent": "crbp-detectron-installer",
                                               **(headers or {})})
    return urllib.request.urlopen(req, timeout=NETWORK_TIMEOUT_S)


def discover_sdist_url() -> str:
    """The sdist's URL from PyPI's PEP 691 JSON simple index (pinned URL if that fails)."""
    index = PYPI_SIMPLE_URL.format(project=SDIST_PROJECT)
    try:
        with _http_get(index, {"Accept": "application/vnd.pypi.simple.v1+json"}) as r:
            data = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        log(f"could not read {index} ({e}); using the pinned URL")
        return SDIST_PINNED_URL
    for f in data.get("files", []):
        if f.get("filename") in (SDIST_FILENAME, SDIST_FILENAME.replace("-", "_", 1)):
            listed = (f.get("hashes") or {}).get("sha256")
            if listed and listed.lower() != SDIST_SHA256:
                raise InstallError(
                    f"PyPI lists sha256 {listed} for {SDIST_FILENAME}, but this installer pins "
                    f"{SDIST_SHA256}: refusing a changed file"
                )
            return f["url"]
    log(f"{SDIST_FILENAME} not listed at {index}; using the pinned URL")
    return SDIST_PINNED_URL


def download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with _http_get(url) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
    except (urllib.error.URLError, OSError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = getattr(e, "reason", None) or e
        raise InstallError(
            f"cannot reach PyPI to download {SDIST_FILENAME} from {url}: {reason} "
            "(check network access to pypi.org/files.pythonhosted.org, or pass --sdist PATH "
            "to a local copy)"
        ) from None
    os.replace(tmp, dest)


def obtain_sdist(local: Optional[str]) -> Path:
    if local:
        path = Path(local)
        if not path.is_file():
            raise InstallError(f"--sdist {local}: no such file")
        verify_sha256(path)
        return path
    cached = cache_dir() / SDIST_FILENAME
    if cached.is_file():
        try:
            verify_sha256(cached)
            log(f"using cached {cached} (sha256 verified)")
            return cached
        except InstallError as e:
            log(f"discarding cached copy: {e}")
            cached.unlink()
    url = discover_sdist_url()
    log(f"downloading {url}")
    download(url, cached)
    try:
        verify_sha256(cached)
    except InstallError:
        cached.unlink()
        raise
    return cached


# ---------------------------------------------------------------------------------------
# Building the installable tree
# ---------------------------------------------------------------------------------------
def extract(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python without extraction filters: refuse unsafe member names
            for m in tar.getmembers():
                p = Path(m.name)
                if p.is_absolute() or ".." in p.parts or m.issym() or m.islnk():
                    raise InstallError(f"unsafe path in {sdist}: {m.name}")
            tar.extractall(dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / "detectron2" / "__init__.py").is_file():
        raise InstallError(f"{sdist} does not have the expected layout (<root>/detectron2/)")
    return roots[0]


def apply_patches(pkg_dir: Path, patches: Sequence[Patch] = PATCHES) -> None:
    """Apply each exact replacement; fail if the target text does not occur `count` times."""
    for p in patches:
        f = pkg_dir / p.path
        if not f.is_file():
            raise InstallError(f"patch target detectron2/{p.path} does not exist ({p.reason})")
        text = f.read_text()
        found = text.count(p.old)
        if found != p.count:
            raise InstallError(
                f"patch for detectron2/{p.path} expected {p.count} occurrence(s) of "
                f"{p.old.strip()!r}, found {found}: the upstream source changed; "
                f"review the patch ({p.reason})"
            )
        f.write_text(text.replace(p.old, p.new))


def check_no_forbidden(pkg_dir: Path) -> None:
    bad = []
    for f in sorted(pkg_dir.rglob("*.py")):
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            for pattern, what in FORBIDDEN_AFTER_PATCH:
                if pattern.search(line):
                    bad.append(f"{f.relative_to(pkg_dir.parent)}:{lineno} uses {what}")
    if bad:
        raise InstallError(f"unpatched incompatibilities remain: {'; '.join(bad)}")


def build_tree(src_root: Path, stage: Path) -> Path:
    """Lay out an installable project in `stage`: detectron2/ + projects + generated files."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pkg = stage / "detectron2"
    shutil.copytree(src_root / "detectron2", pkg, ignore=ignore)
    for module, rel in PROJECTS.items():
        src = src_root / rel
        if not (src / "__init__.py").is_file():
            raise InstallError(f"project {rel} missing from the sdist")
        dst = stage / Path(*module.split("."))
        if dst.exists():
            raise InstallError(f"{module} already exists in the sdist's detectron2/")
        shutil.copytree(src, dst, ignore=ignore)
    if not (pkg / "model_zoo" / "configs" / PANOPTIC_CONFIG).is_file():
        raise InstallError("model-zoo configs missing from the sdist")
    if any(pkg.glob("_C*")):
        raise InstallError("the sdist unexpectedly contains detectron2/_C*")

    apply_patches(pkg)
    check_no_forbidden(pkg)

    (pkg / "_C.py").write_text(
        STANDIN_TEMPLATE.format(
            build_id=BUILD_ID,
            docs_url=INSTALL_DOCS_URL,
            ops=COMPILED_OPS,
            ops_short="deformable conv, rotated RoIAlign/IoU/NMS, fast COCOeval",
        )
    )
    (stage / "setup.py").write_text(
        SETUP_PY_TEMPLATE.format(
            name=DIST_NAME, version=DIST_VERSION, sdist_version=SDIST_VERSION,
            requirements=list(REQUIREMENTS),
        )
    )
    (stage / "pyproject.toml").write_text(PYPROJECT_TOML)
    if (src_root / "LICENSE").is_file():
        shutil.copy2(src_root / "LICENSE", stage / "LICENSE")
    return stage


# ---------------------------------------------------------------------------------------
# pip
# ---------------------------------------------------------------------------------------
def pip(args: Sequence[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise InstallError(f"pip failed ({what}), exit status {rc}; see pip's output above")


def _can_build_without_isolation() -> bool:
    """setuptools>=70.1 builds wheels by itself; older ones need the `wheel` package."""
    v = _dist_version("setuptools")
    if v is None:
        return False
    try:
        major, minor = (int(x) for x in re.findall(r"\d+", v)[:2])
    except ValueError:
        return False
    return (major, minor) >= (70, 1) or _dist_version("wheel") is not None


@contextlib.contextmanager
def install_lock():
    """Serialize concurrent runs (e.g. two `make setup`s) on this machine."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".install.lock", "w") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def install(args: argparse.Namespace) -> None:
    status = inspect_installation()
    if not status.torch_ok:
        raise InstallError(
            f"torch/torchvision are not installed in {sys.executable}; install them first "
            "(pinned: torch==2.14.1 torchvision==0.29.1, e.g. `make setup`)"
        )
    if importlib.util.find_spec("pip") is None:
        raise InstallError(f"pip is not available in {sys.executable}")

    sdist = obtain_sdist(args.sdist)
    with tempfile.TemporaryDirectory(prefix="crbp-d2-") as tmp:
        src_root = extract(sdist, Path(tmp) / "src")
        stage = build_tree(src_root, Path(tmp) / "detectron2-build")
        log(f"patched {len(PATCHES)} places, wrote detectron2/_C.py stand-in (build {BUILD_ID})")

        deps = list(REQUIREMENTS)
        declared = {_req_name(r) for r in deps}
        deps += [d for d in PANOPTICAPI_DEPS if _req_name(d) not in declared]
        if not any(_dist_version(n) for n in OPENCV_DISTS):
            deps.append(OPENCV_REQUIREMENT)
        pip(deps, "installing detectron2's runtime dependencies")

        flags = ["--no-deps", "--force-reinstall"]
        if _can_build_without_isolation():
            flags.append("--no-build-isolation")
        pip([*flags, str(stage)], f"installing {DIST_NAME}=={DIST_VERSION}")

    if args.force or _find_spec("panopticapi.evaluation") is None:
        force = ["--force-reinstall"] if args.force else []
        pip(["--no-deps", *force, PANOPTICAPI_REQUIREMENT], "installing panopticapi-lite")

    importlib.invalidate_caches()
    code = VERIFY_SNIPPET.format(build_id=BUILD_ID, config=PANOPTIC_CONFIG)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise InstallError(f"installed, but the import check failed: {last}")
    log(proc.stdout.strip())
    problems = inspect_installation().problems()
    if problems:
        raise InstallError("installed, but still incomplete: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Install detectron2 0.6 (pure-Python build) into this interpreter.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="report the status and exit 0 if installed and current, else 1; "
                           "changes nothing")
    mode.add_argument("--dry-run", action="store_true",
                      help="say what would be done, change nothing (exit 0)")
    parser.add_argument("--force", action="store_true",
                        help="reinstall even if installed (also replaces a compiled detectron2)")
    parser.add_argument("--sdist", metavar="PATH",
                        help=f"use this local {SDIST_FILENAME} instead of downloading "
                             "(sha256 still verified)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        status = inspect_installation()

        if status.compiled_ext is not None and not args.force:
            ok, detail = real_extension_works()
            if ok:
                log(f"detectron2 with compiled ops already installed ({detail}); nothing to do")
                return 0
            msg = (f"detectron2 at {status.d2_dir} has a compiled extension "
                   f"{status.compiled_ext.name} that does not import ({detail}); fix that "
                   "build, or run with --force to replace it by the pure-Python build")
            if args.check or args.dry_run:
                log(msg)
                return 1 if args.check else 0
            raise InstallError(msg)

        problems = status.problems()
        if not problems and not args.force:
            log(f"already installed: {DIST_NAME} {DIST_VERSION} (pure-Python build {BUILD_ID}) "
                f"at {status.d2_dir}, panopticapi at {status.panopticapi.parent}; nothing to do "
                f"({time.monotonic() - t0:.2f}s)")
            return 0
        if args.check or args.dry_run:
            if problems:
                log("not installed / outdated: " + "; ".join(problems))
            if args.dry_run:
                log(f"would {'re' if args.force else ''}install {DIST_NAME} {DIST_VERSION} "
                    f"from {SDIST_FILENAME} into {sys.executable}")
                return 0
            return 1 if problems else 0

        with install_lock():
            install(args)
        log(f"done: installed {DIST_NAME} {DIST_VERSION} into {sys.prefix} "
            f"({time.monotonic() - t0:.0f}s)")
        return 0
    except InstallError as e:
        print(f"install_detectron2: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("install_detectron2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
