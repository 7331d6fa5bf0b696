"""Inference speed as the paper reports it (Table 1e, Fig. 2): milliseconds per image.

Batch 1, a fixed image set (the first ``warmup + images`` images of ``DATASETS.TEST[0]`` in the
test loader's order, already decoded and resized so data loading is not timed), ``warmup`` images
run first and discarded, then the median over ``images`` forward passes of the model in eval
mode, including post-processing (score threshold, top-k, NMS). On CUDA the device is
synchronised around each pass. The paper timed an Nvidia M40; ours is timed on whatever device
the cell ran on, which the report names.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List

import torch


def measure_ms_per_image(cfg, weights: str, images: int = 100, warmup: int = 10) -> Dict[str, Any]:
    """Median ms per image of the model of ``cfg`` with ``weights`` (see the module docstring).

    Returns ``{"ms": median, "ms_p25", "ms_p75", "images", "warmup", "unique_images", "device",
    "threads"}``; with fewer test images than ``warmup + images``, images are reused in order
    (``unique_images`` says how many distinct ones there were).
    """
    from detectron2.data import build_detection_test_loader
    from detectron2.modeling import build_model

    from focal_plugin.checkpoint import load_for_inference

    model = build_model(cfg)
    load_for_inference(model, weights, "the cell's config")
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])  # batch 1, sequential
    inputs: List[Any] = []
    for batch in loader:
        inputs.append(batch)
        if len(inputs) >= warmup + images:
            break
    if not inputs:
        raise ValueError(f"dataset {cfg.DATASETS.TEST[0]!r} has no images to time")
    unique = len(inputs)
    device = torch.device(cfg.MODEL.DEVICE)
    cuda = device.type == "cuda"
    times: List[float] = []
    with torch.no_grad():
        for i in range(warmup + images):
            batch = inputs[i % unique]
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(batch)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"ms": statistics.median(times), "ms_p25": q[0], "ms_p75": q[2], "images": images,
            "warmup": warmup, "unique_images": unique,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "threads": torch.get_num_threads()}
