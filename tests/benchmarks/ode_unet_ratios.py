"""Continuous U-Net against the U-Nets it is compared with: parameters, FLOPs and latency per call, as ratios, in
one run. Two references: the matched U-Net (the shipped base: widths as the ODE network's, one ResNet block per
level down) and the paper's baseline proportion (two ResNet blocks per level, ``model.layers_per_block = 2``), against
which the paper-proportioned continuous U-Net (every level but the deepest at half width) is the paper's comparison.

    python tests/benchmarks/ode_unet_ratios.py [--threads 2] [--batches 1 64] [--repeats 30] [--json OUT]

Both networks come from the default config's recipes (the shipped artifacts when the zoo has them; costs do not depend
on the weights, so an untrained network of the same config gives the same figures). Latency is the median of
``--repeats`` calls, interleaved round-robin across the networks so drift on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench import config as cfg
from bench import sweep, zoo
from bench.measure.flops import fvcore_flops
from bench.model import build_unet
from bench.provenance import provenance
from techniques.ode_unet import ContinuousUNet, ODEUNet

VARIANTS = [("euler", 1), ("midpoint", 1), ("rk4", 1), ("rk4", 2)]
REFERENCES = ("U-Net (matched)", "U-Net lpb=2")


def networks() -> tuple[dict[str, torch.nn.Module], bool]:
    """The two reference U-Nets, the matched ODE network under each solver and the paper-proportioned one; and
    whether the matched ODE weights are the trained ones."""
    base = sweep.base_recipe(cfg.load())
    ode_recipe = ODEUNet().artifacts(ODEUNet.Params(), base)["ode"]
    paper_recipe = ODEUNet().artifacts(ODEUNet.Params(proportions="paper"), base)["ode"]
    shape = {"sample_size": base.resolution, "in_channels": 1, "out_channels": 1}
    nets = {"U-Net (matched)": build_unet({**shape, **base.network}),
            "U-Net lpb=2": build_unet({**shape, **base.network, "layers_per_block": 2})}
    found = zoo.find(ode_recipe)
    for solver, steps in VARIANTS:
        ode = (ContinuousUNet.from_pretrained(found.path / "unet", low_cpu_mem_usage=False) if found else
               ContinuousUNet(sample_size=base.resolution, **ode_recipe.network))
        ode.set_solver(solver, steps)
        nets[f"ODE {solver} x {steps}"] = ode
    widths = ",".join(map(str, paper_recipe.network["block_out_channels"]))
    nets[f"ODE paper ({widths}) rk4 x 1"] = ContinuousUNet(sample_size=base.resolution, **paper_recipe.network)
    return {k: v.eval() for k, v in nets.items()}, found is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    nets, trained = networks()
    x1, t1 = torch.randn(1, 1, 16, 16), torch.full((1,), 500)
    rows = {name: {"params": sum(q.numel() for q in net.parameters()), "flops_per_call": fvcore_flops(net, (x1, t1))}
            for name, net in nets.items()}
    with torch.no_grad():
        for batch in a.batches:
            x, t = torch.randn(batch, 1, 16, 16), torch.randint(0, 1000, (batch,))
            times: dict[str, list[float]] = {name: [] for name in nets}
            for net in nets.values():  # warm-up
                net(x, t)
            for _ in range(a.repeats):
                for name, net in nets.items():
                    start = time.perf_counter()
                    net(x, t)
                    times[name].append(time.perf_counter() - start)
            for name in nets:
                rows[name][f"ms_batch{batch}"] = statistics.median(times[name]) * 1e3
    cols = ["params", "flops_per_call", *(f"ms_batch{b}" for b in a.batches)]
    print(f"threads={a.threads} repeats={a.repeats} (median ms per call; ratios: network / matched U-Net, "
          "network / U-Net lpb=2)")
    print("| network | " + " | ".join(f"{c} | / matched | / lpb=2" for c in cols) + " |")
    print("|---|" + "---|---|---|" * len(cols))
    for name, row in rows.items():
        for ref, tag in zip(REFERENCES, ("ratio", "ratio_lpb2"), strict=True):
            row.update({f"{c}_{tag}": row[c] / rows[ref][c] for c in cols})
        cells = " | ".join((f"{row[c]:,.2f}" if isinstance(row[c], float) else f"{row[c]:,}")
                           + f" | {row[c + '_ratio']:.2f} | {row[c + '_ratio_lpb2']:.2f}" for c in cols)
        print(f"| {name} | {cells} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "rows": rows, "trained_weights": trained,
                                      "provenance": provenance("cpu")}, indent=1))


if __name__ == "__main__":
    main()
