"""Caser's horizontal filters at the MovieLens-100k benchmark's shape: ``F.conv1d`` vs ``blocks.window_conv``.

Shape: batch 2048, d 64, window L 5 (+4 zero columns), 40 filters of height <= 5 (Caser n_h 8 x heights 1..5 in one
group). Forward + backward, median of 7 after 2 warm-ups, one torch thread, with torch's oneDNN on and off.
``window_conv`` takes the matmul path only on a CPU without oneDNN, so with oneDNN on both columns run conv1d.

    python benchmarks/window_conv.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from lsdata.models import blocks


def median_seconds(f, repeats: int = 7, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        f().sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(2048, 64, 9, requires_grad=True)
    w = torch.randn(40, 64, 5, requires_grad=True)
    b = torch.zeros(40, requires_grad=True)
    print("| oneDNN | F.conv1d fwd+bwd s | window_conv fwd+bwd s |\n|---|---:|---:|")
    for on in (True, False):
        torch.backends.mkldnn.enabled = on
        print(f"| {'on' if on else 'off'} | {median_seconds(lambda: F.conv1d(x, w, b)):.3f} | "
              f"{median_seconds(lambda: blocks.window_conv(x, w, b)):.3f} |")


if __name__ == "__main__":
    main()
