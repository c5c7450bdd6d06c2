#!/usr/bin/env bash
# Builds benchmarks/gpu/.whl/ (git-ignored) on THIS machine (CPU, network to PyPI), for
# run_gpu_suite.sh on a bare GPU machine with Python 3.12, PyTorch preinstalled and no network.
#
#   bash benchmarks/gpu/build_wheels.sh          # what pathfinder / mask_head / core_memory need
#   bash benchmarks/gpu/build_wheels.sh --fpn    # + Detectron2 and its runtime deps (fpn workload)
#
# Contents (never torch / torchvision: the GPU machine has its own build, and a bare requirement
# would pull a multi-GB one):
#   1. binary wheels for CPython 3.12 manylinux x86_64 (pip download --only-binary=:all:):
#      matplotlib and its deps (numpy, Pillow, ...), tabulate; torchdeq==0.1.0 (--no-deps: it
#      would otherwise pull torch);
#   2. our package, built here as a pure-Python wheel (pip wheel --no-deps);
#   3. with --fpn: Detectron2's runtime deps (binary wheels where PyPI has them; the pure-Python
#      sdists fvcore, iopath, antlr4-python3-runtime are turned into wheels here) and Detectron2
#      itself, built as a pure-Python wheel from the tree that tools/install_detectron2.py
#      installed into .venv (step 3b: run `make setup` first if it is missing).
#      Not OpenCV: Detectron2 imports it optionally (DETECTRON2_DISABLE_CV2), building and
#      training the Panoptic FPN on the benchmark's synthetic batch never calls it, and its
#      wheel (~59 MiB) would not fit the device tool's carry beside the rest.
# The device tool carries at most 64 MiB with the working tree: the script prints the total
# (about 39 MiB without --fpn, about 45 MiB with it). numpy, Pillow and matplotlib are most of it:
# if they are preinstalled there, they can be deleted from .whl/ before carrying.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
WHL=benchmarks/gpu/.whl
TARGET_PY=${TARGET_PY:-3.12}
FPN=0
for arg in "$@"; do
  case "$arg" in
    --fpn) FPN=1 ;;
    *) echo "usage: $0 [--fpn]" >&2; exit 2 ;;
  esac
done
mkdir -p "$WHL"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

PIP=("$PY" -m pip --disable-pip-version-check)
DOWNLOAD=("${PIP[@]}" download --only-binary=:all: --python-version "$TARGET_PY" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any -d "$WHL")

pure_wheel() {  # a pure-Python wheel of a PyPI project: downloaded if PyPI has one, else built here
  "${DOWNLOAD[@]}" --no-deps "$1" 2>/dev/null || "${PIP[@]}" wheel --no-deps -w "$WHL" "$1"
}

echo "== 1. benchmark dependencies (CPython $TARGET_PY, manylinux x86_64)"
"${DOWNLOAD[@]}" matplotlib tabulate pytest  # pytest: the suite runs the core's CUDA autocast test
"${DOWNLOAD[@]}" --no-deps torchdeq==0.1.0

echo "== 2. crbp-detectron (pure-Python wheel, built from a clean copy of the sources)"
mkdir -p "$TMP/crbp"
cp -r setup.py crbp_detectron "$TMP/crbp/"
[ -f README.md ] && cp README.md "$TMP/crbp/"
find "$TMP/crbp" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" wheel --no-deps --no-build-isolation -w "$WHL" "$TMP/crbp"

if [ "$FPN" = 1 ]; then
  echo "== 3a. Detectron2's runtime dependencies"
  "${DOWNLOAD[@]}" Pillow "pycocotools>=2.0.8" termcolor "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29" \
      "pyyaml>=5.1" portalocker typing_extensions
  "${DOWNLOAD[@]}" --no-deps "omegaconf>=2.1,<2.4" "hydra-core>=1.1"
  pure_wheel "fvcore==0.1.5.post20221221"
  pure_wheel "iopath>=0.1.7,<0.1.10"
  pure_wheel "antlr4-python3-runtime==4.9.3"
  pure_wheel "panopticapi-lite==0.2.0"

  echo "== 3b. Detectron2 (pure-Python wheel from the tree installed in this venv)"
  if D2_DIR=$("$PY" -c "import os, detectron2; print(os.path.dirname(detectron2.__file__))" 2>/dev/null); then
    D2_VERSION=$("$PY" -c "from importlib.metadata import version; print(version('detectron2'))")
    mkdir -p "$TMP/d2"
    cp -r "$D2_DIR" "$TMP/d2/detectron2"
    find "$TMP/d2" -name __pycache__ -prune -exec rm -rf {} +
    printf 'graft detectron2\nglobal-exclude *.py[cod]\n' > "$TMP/d2/MANIFEST.in"
    cat > "$TMP/d2/setup.py" <<EOF
from setuptools import find_packages, setup
setup(name="detectron2", version="$D2_VERSION", zip_safe=False, include_package_data=True,
      packages=find_packages(include=["detectron2", "detectron2.*"]))
EOF
    "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$WHL" "$TMP/d2"
  else
    echo "!! detectron2 is not installed in $PY: run 'make setup' (tools/install_detectron2.py) first," >&2
    echo "!! then re-run '$0 --fpn'. Without it the GPU suite skips the fpn workload." >&2
  fi
fi

echo "== wheels in $WHL:"
ls -1 "$WHL"
TOTAL_KIB=$(du -sk "$WHL" | cut -f1)
echo "total: $((TOTAL_KIB / 1024)) MiB (the device tool carries at most 64 MiB with the working tree)"
if [ "$TOTAL_KIB" -gt $((56 * 1024)) ]; then
  echo "!! more than 56 MiB: carrying this folder may exceed the device tool's limit" >&2
fi
