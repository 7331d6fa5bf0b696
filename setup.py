#!/usr/bin/env python
"""focal_plugin: the paper "Focal Loss for Dense Object Detection" as a detectron2 plugin.

detectron2 is deliberately not in install_requires: pip cannot resolve it from PyPI.
`make setup` (tools/install_detectron2.py) provides it; see README.
"""

from setuptools import find_packages, setup

setup(
    name="focal_plugin",
    version="0.1.0",
    description="Focal loss, RetinaNet and the paper's ablations as a detectron2 plugin",
    python_requires=">=3.9",
    packages=find_packages(include=("focal_plugin", "focal_plugin.*")),
    package_data={"focal_plugin": ["configs/**/*.yaml", "configs/**/*.py"]},
    install_requires=[
        # Never above 2.14.1 (the newest these machines resolve); 2.1 is the oldest tested API.
        "torch>=2.1,<=2.14.1",
        "torchvision>=0.16,<=0.29.1",
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools>=2.0.2",
        "faster-coco-eval>=1.5",  # COCO evaluation backend (TEST.COCO_EVAL_BACKEND "auto")
        "opencv-python-headless>=4.5",
        "numpy",
        "Pillow",
        "matplotlib",
        "tqdm",
        "tabulate",
        "scipy>=1.11",  # Welch's t-test of the verdicts (ttest_ind(...).confidence_interval)
        "PyYAML",
    ],
    extras_require={
        "dev": ["pytest>=7.3", "pytest-timeout", "ruff", "submitit>=1.4", "hypothesis"],
        "slurm": ["submitit>=1.4"],
        "fast-eval": ["faster-coco-eval>=1.5"],
    },
)
