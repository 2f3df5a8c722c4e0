"""How far one seed's image moves with the batch it is in, against the seed-only rule (bench.sampling).

For each sampler and network: seeds 0..15 sampled as one batch, then seeds [6, 1] as a batch of two and seed 6
alone; the largest difference of each seed's image across the compositions, the rule's tolerance for the evaluations
made, their ratio (the rule holds below 1), and how many uint8 pixels differ. Kernel paths are chosen from outside:

    python tests/benchmarks/seed_only_kernels.py                                   # this CPU's kernels
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python tests/benchmarks/seed_only_kernels.py                               # an AVX2 machine's kernels
    python tests/benchmarks/seed_only_kernels.py --device cuda --dtype float32 float16 bfloat16

The networks are the shipped MNIST 16×16 U-Net (the default sweep's base) and the class-conditional DiT (guided, w = 2).
float16/bfloat16 run under autocast: the rule is float32's, so their ratios say how much looser reduced precision is.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from bench import conditioning, recipes, train
from bench.conditioning import Guidance
from bench.images import to_uint8
from bench.measure.flops import CallRecorder
from bench.sampling import generators, seed_only_tolerance


def probe(net, sample, device: str, dtype: str) -> dict:
    autocast = (torch.autocast(device.split(":")[0], dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
    recorder = CallRecorder({"model": net})
    with torch.no_grad(), autocast:
        whole = sample(generators(range(16))).float()
        evaluations = recorder.calls["model"]
        pair = sample(generators([6, 1])).float()
        alone = sample(generators([6])).float()
    recorder.remove()
    tol = seed_only_tolerance(evaluations)
    moved, ratio = 0.0, 0.0
    for a, b in ((pair, whole[[6, 1]]), (alone, whole[[6]])):
        diff = (a.double() - b.double()).abs()
        moved = max(moved, float(diff.max()))
        ratio = max(ratio, float((diff / (tol * (1 + b.double().abs()))).max()))  # the rule: |a - b| ≤ tol + tol·|b|
    pixels = int((to_uint8(pair) != to_uint8(whole[[6, 1]])).sum())
    return {"evaluations": evaluations, "max_moved": moved, "tolerance": tol, "ratio": ratio,
            "uint8_pixels_differing": pixels, "uint8_pixels": pair.numel()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    from techniques.step_reduction import make_sampler

    unet = train.load_artifact(recipes.denoiser_recipe("mnist", 16, steps=4000), progress=False)[0]
    dit = train.load_artifact(recipes.denoiser_recipe("mnist", 16, steps=8000, arch="dit", conditioning="class"),
                              progress=False)[0]
    rows = []
    for name, net in (("unet", unet), ("dit", dit)):
        net.to(args.device)
        for sampler, steps in (("ddim", 10), ("ddim", 50), ("dpmpp_2m", 10), ("ddpm", 50)):
            sample = make_sampler(net, sampler, steps)
            if name == "dit":
                sample, _ = conditioning.conditional_sampler(sample, 10, Guidance(scale=2.0))
            for dtype in args.dtype:
                row = {"network": name, "sampler": sampler, "steps": steps, "device": args.device, "dtype": dtype,
                       "capability": torch.backends.cpu.get_cpu_capability(),
                       "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                       "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                       **probe(net, sample, args.device, dtype)}
                rows.append(row)
                print(f"{name:4s} {sampler:8s} {steps:3d} {dtype:8s} evals {row['evaluations']:3d}  "
                      f"moved {row['max_moved']:.2e}  tolerance {row['tolerance']:.2e}  ratio {row['ratio']:.3f}  "
                      f"uint8 {row['uint8_pixels_differing']}/{row['uint8_pixels']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
