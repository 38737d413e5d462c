"""Choosing where the models run, and how many CPU threads they get."""

from __future__ import annotations

import os

import torch

from lowkeyd.errors import EngineError


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ('cuda', 'cuda:1', 'mps', 'cpu') or the best available: CUDA, then Apple MPS, then CPU."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise EngineError(f"unknown device {requested!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {requested!r} asked for, but this torch build sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EngineError("device 'mps' asked for, but Apple's Metal backend is not available")
    return device


def default_cpu_threads() -> int:
    """The CPUs this process may use, less what other processes are keeping busy right now.

    torch's intra-op threads synchronise at every operator: when they outnumber
    the idle cores, each barrier waits for a descheduled thread. On the 2-core
    development machine with other work running, 10 attack steps took 135 s
    with 2 threads and 20 s with 1 (one forward+backward up to 25x slower,
    measured on that machine), so a busy machine gets fewer threads, never more than
    the cores that are idle.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_cpu_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads (``LOWKEYD_THREADS`` overrides the default) and return the count."""
    if threads is None:
        env = os.environ.get("LOWKEYD_THREADS")
        threads = int(env) if env else default_cpu_threads()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()
