#!/usr/bin/env python
"""crbp-detectron: recurrent vision models trained with contractor recurrent back-propagation,
as a Detectron2 extension.

Detectron2 itself is not on PyPI, so it is not an install requirement here: `make setup` (or
`python tools/install_detectron2.py`) installs it. These are the ranges the package works with;
`make setup` installs exact versions, with hashes, from requirements/setup.txt. See README.md.
"""
import os

from setuptools import find_packages, setup


setup(
    name="crbp-detectron",
    version="0.1.0",
    description="Contractor recurrent back-propagation (C-RBP) for Detectron2",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["crbp_detectron", "crbp_detectron.*"]),
    # The configs live in crbp_detectron/configs (the top-level `configs` is a link to it) so they
    # ship with the package and `--config-file panoptic_crbp.yaml` resolves from any directory.
    package_data={"crbp_detectron": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*.py"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "Pillow>=9",
        "matplotlib>=3.5",
        "opencv-python-headless>=4.6",
        "pycocotools>=2.0.6",
        "fvcore>=0.1.5.post20221221,<0.1.6",
        "tqdm>=4.40",
        "PyYAML>=5.1",
        "tabulate>=0.8.9",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1"],
        "bench": ["torchdeq==0.1.0"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],  # tools/export_model.py --format onnx, and its check
    },
)
