"""Seconds per training step (forward + backward + AdamW) and peak memory, one fresh process per model.

Compares, at the same batch and input length: AST, PaSST with the paper's structured patchout (40 of 99
time columns and 4 of 12 frequency rows dropped), PaSST without patchout, and HTS-AT. Each model runs in
its own process so the peak resident memory (ru_maxrss) belongs to that model alone.

    python benchmarks/bench_train_step.py --batch 8 --seconds 10 --steps 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "ast-base384": ("ast-base384", {}),
    "passt-patchout-t40-f4": ("passt-s-p16-s10", {"s_patchout_t": 40, "s_patchout_f": 4}),
    "passt-no-patchout": ("passt-s-p16-s10", {"s_patchout_t": 0, "s_patchout_f": 0}),
    "htsat-tiny": ("htsat-tiny", {}),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(config: str, batch: int, seconds: float, steps: int, threads: int) -> dict:
    """Inside the child process: time `steps` training steps after one warm-up step."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tagger.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch, kwargs = CONFIGS[config]
    model = create_model(arch, num_classes=527, **kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    wave = torch.randn(batch, int(model.sample_rate * seconds)) * 0.1
    target = (torch.rand(batch, 527) < 0.02).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    setup_mib = _rss_mib()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(wave).logits, target)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "config": config,
        "step_s": statistics.median(times),
        "peak_rss_mib": _rss_mib(),
        "setup_rss_mib": setup_mib,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.batch, args.seconds, args.steps, args.threads)))
        return
    import torch

    print(
        f"torch {torch.__version__}, CPU, {args.threads} threads, fp32, batch {args.batch}, {args.seconds:g} s input, "
        f"median of {args.steps} steps after 1 warm-up step, one process per model"
    )
    print("| config | params M | s / step | peak RSS MiB | RSS after set-up MiB | peak - set-up MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for config in args.configs:
        command = [sys.executable, __file__, "--child", config, "--batch", str(args.batch),
                   "--seconds", str(args.seconds), "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results[config] = r
        print(f"| {config} | {r['params_M']:.2f} | {r['step_s']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['setup_rss_mib']:.0f} | {r['peak_rss_mib'] - r['setup_rss_mib']:.0f} |", flush=True)
    if {"passt-patchout-t40-f4", "passt-no-patchout"} <= results.keys():
        ratio = results["passt-no-patchout"]["step_s"] / results["passt-patchout-t40-f4"]["step_s"]
        print(f"\nPaSST step time, no patchout / patchout: {ratio:.2f}x (target >= 2)")
    if {"ast-base384", "htsat-tiny"} <= results.keys():
        ratio = results["htsat-tiny"]["peak_rss_mib"] / results["ast-base384"]["peak_rss_mib"]
        print(f"HTS-AT peak RSS / AST peak RSS: {ratio:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
