"""The benchmarks that must behave on any machine: `make bench-gpu` on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the benchmark runs for minutes")
def test_bench_gpu_skips_in_one_line_without_cuda():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "bench/gpu.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip().splitlines() == [
        "bench/gpu.py: no CUDA device here; skipped (run it on a GPU machine: make bench-gpu)"
    ]
