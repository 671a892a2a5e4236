"""Memory stays flat over a long run: thousands of tiny samples generated and captioned through the
pipeline API; neither live tensors, nor Python's heap, nor the process's resident memory grows
with their number.  Live tensor bytes are exact (every tensor object, storages counted once);
resident memory (after ``malloc_trim``) catches leaks below Python."""

from __future__ import annotations

import ctypes
import gc
import resource
import tracemalloc
from typing import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import is_fake

BATCH = 32
HALF = 16  # batches per measured half: 2 x 16 x 32 x 2 tasks = 2048 samples measured


def resident_mib() -> float:
    # hand freed heap pages back first: what stays resident is what is still allocated
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def live_tensor_bytes() -> int:
    storages = {}
    for obj in gc.get_objects():
        # type(): no proxy objects' __class__ hooks; fake tensors (torch.compile's tracing, kept in
        # its caches by earlier tests) hold no memory and have no data pointer
        if issubclass(type(obj), torch.Tensor) and not is_fake(obj):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measure(step: Callable[[int], None], start: int, batches: int) -> dict[str, float]:
    """Growth over ``batches`` of live tensor bytes, Python's traced heap (bytes, when tracemalloc
    runs) and resident/peak memory (MiB)."""
    gc.collect()
    tensors, heap = live_tensor_bytes(), tracemalloc.get_traced_memory()[0]
    rss, peak = resident_mib(), peak_mib()
    for i in range(start, start + batches):
        step(i)
    gc.collect()
    return {"tensors": live_tensor_bytes() - tensors,
            "heap": tracemalloc.get_traced_memory()[0] - heap,
            "rss": resident_mib() - rss, "peak": peak_mib() - peak}


@pytest.fixture
def workload(tiny_pipeline):
    from unigen.data.shapes import ShapesDataset

    data = ShapesDataset("val", BATCH, 32, seed=0)
    images = torch.stack([data[i]["image"] for i in range(BATCH)])
    prompts = [data[i]["caption"] for i in range(BATCH)]

    def step(i: int) -> tuple[torch.Tensor, list[str]]:
        made = tiny_pipeline.text_to_image(prompts, num_steps=2, seed=i * BATCH, output="tensor")
        return made, tiny_pipeline.caption(images, num_steps=2, seed=i * BATCH)

    return step


def test_memory_is_flat_over_thousands_of_samples(workload):
    tracemalloc.start()
    try:
        measure(workload, 0, 4)  # warm-up: allocator pools, einops/torch caches
        first = measure(workload, 4, HALF)
        second = measure(workload, 4 + HALF, HALF)
    finally:
        tracemalloc.stop()
    samples = HALF * BATCH * 2
    assert first["tensors"] == 0 and second["tensors"] == 0, (first, second)
    # Python objects: a leaked record per sample would be >= 200 bytes
    assert second["heap"] / samples < 48, (first, second)
    # a leaked 32x32 image is 12 KiB: 1024 of them would be 12 MiB; the peak (getrusage) also
    # counts a step's transient buffers, so it gets a looser bound
    assert first["rss"] < 2 and second["rss"] < 2 and second["peak"] < 24, (first, second)


def test_the_measure_sees_a_leak(workload):
    """The instrument itself: keeping every generated batch shows up, byte for byte."""
    kept: list = []
    growth = measure(lambda i: kept.append(workload(i)), 0, 3)
    held = sum(images.numel() * images.element_size() for images, _ in kept)
    assert held == 3 * BATCH * 3 * 32 * 32 * 4 and growth["tensors"] == held, (growth, held)
    assert growth["rss"] > 0.9 * held / 2**20, (growth, held)
