# Sourced by the GPU scripts (run_gpu_suite.sh, pathfinder_paper.sh) on the bare GPU machine:
# installs what build_wheels.sh put in $WHL (no network) and sets PYTHONPATH to the source tree.
# Expects PY (the interpreter) and WHL (the wheel folder).
PIP=("$PY" -m pip install --disable-pip-version-check --no-index --find-links "$WHL")
if [ -d "$WHL" ]; then
  # Already-installed requirements (numpy, Pillow, torch for torchdeq) are left as they are.
  "${PIP[@]}" matplotlib tabulate || echo "!! matplotlib/tabulate not installed"
  "${PIP[@]}" pytest || echo "!! pytest not installed: the CUDA autocast check is skipped"
  "${PIP[@]}" --no-deps torchdeq==0.1.0 || echo "!! torchdeq not installed: its methods are skipped"
  if ls "$WHL"/detectron2-*.whl >/dev/null 2>&1; then
    "${PIP[@]}" Pillow "pycocotools>=2.0.8" termcolor "yacs>=0.1.8" tabulate cloudpickle tqdm pyyaml \
        portalocker typing_extensions antlr4-python3-runtime==4.9.3 \
      && "${PIP[@]}" --no-deps omegaconf hydra-core fvcore iopath panopticapi-lite detectron2 \
      || echo "!! Detectron2 or its deps failed to install: the fpn workload will be skipped"
  else
    echo "-- no detectron2 wheel in $WHL (build_wheels.sh --fpn): the fpn workload will be skipped"
  fi
  "${PIP[@]}" --no-deps crbp-detectron || echo "!! crbp-detectron wheel not installed: using the source tree"
else
  echo "!! $WHL not found: running from the source tree with whatever is installed"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the benchmarks package lives in the tree
# OpenCV is not shipped (too big to carry); Detectron2 treats it as optional.
"$PY" -c "import cv2" 2>/dev/null || export DETECTRON2_DISABLE_CV2=1
export PYTHONWARNINGS=ignore
