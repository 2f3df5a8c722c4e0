"""FLOPs per denoiser call (FLOPs = 2 × MACs) and call counting with forward hooks.

fvcore reports MACs and skips ``aten::scaled_dot_product_attention`` unless given a handle; torch's
``FlopCounterMode`` reports 2×MACs and sees attention on the CPU only under the MATH SDPA backend. fvcore also counts
group_norm and upsample (FlopCounterMode does not), so the two differ by about 1% on the tiny U-Net.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn


def sdpa_mac_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for SDPA: MACs = B·H·L·S·(E + Ev) (QKᵀ and the product with V)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, seq_q, e = q
    seq_k, ev = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return n * seq_q * seq_k * (e + ev)


def fvcore_flops(module: nn.Module, inputs: tuple) -> int:
    """FLOPs of one call ``module(*inputs)`` counted by fvcore (its MACs × 2), attention included."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_mac_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():  # fvcore's jit tracing warns about torch.jit deprecations, not about us
        warnings.simplefilter("ignore")
        return 2 * int(analysis.total())


def torch_flops(module: nn.Module, inputs: tuple) -> int:
    """FLOPs of one call counted by ``torch.utils.flop_counter.FlopCounterMode`` under the MATH SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*inputs)
    return int(counter.get_total_flops())


class CallRecorder:
    """Forward hooks that count calls per network and keep each network's first inputs (as batch 1)."""

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        self.networks = networks
        self.calls: Counter[str] = Counter()
        self.first_inputs: dict[str, tuple] = {}
        # a conditional denoiser's evaluations are its ``counted`` module's calls (two per guided call)
        self.networks = {name: getattr(net, "counted", net) for name, net in networks.items()}
        self._handles = [net.register_forward_pre_hook(self._hook(name)) for name, net in self.networks.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.calls[name] += 1
            if name not in self.first_inputs:
                self.first_inputs[name] = _batch_one(args)

        return hook

    def reset(self) -> None:
        self.calls.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def flops_per_call(self) -> dict[str, int]:
        """FLOPs of one call at batch 1 for every network that ran, by fvcore."""
        return {name: fvcore_flops(self.networks[name], inputs) for name, inputs in self.first_inputs.items()}


def _batch_one(args: tuple) -> tuple:
    batch = next((a.shape[0] for a in args if torch.is_tensor(a) and a.ndim > 0), None)
    return tuple(a[:1].detach().clone() if torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == batch
                 else a for a in args)
