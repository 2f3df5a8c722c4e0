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
    """Forward hooks that count calls per network and keep each network's first inputs (as batch 1). While
    ``count_ran`` is set they also count, per network, the FLOPs its calls actually ran (``FlopCounterMode`` around
    each call: a call a cache cut short counts what it computed)."""

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        self.networks = networks
        self.calls: Counter[str] = Counter()
        self.first_inputs: dict[str, tuple] = {}
        self.count_ran = False
        self.ran_flops: Counter[str] = Counter()  # FLOPs per image
        self.ran_calls: Counter[str] = Counter()
        self._counters: list[Any] = []
        # a conditional denoiser's evaluations are its ``counted`` module's calls (two per guided call)
        self.networks = {name: getattr(net, "counted", net) for name, net in networks.items()}
        self._handles = [h for name, net in self.networks.items()
                         for h in (net.register_forward_pre_hook(self._hook(name)),
                                   net.register_forward_hook(self._done(name)))]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.calls[name] += 1
            if name not in self.first_inputs:
                self.first_inputs[name] = _batch_one(args)
            if self.count_ran:
                from torch.utils.flop_counter import FlopCounterMode

                self.ran_calls[name] += 1

                counter = FlopCounterMode(display=False)
                counter.__enter__()
                batch = next((a.shape[0] for a in args if torch.is_tensor(a) and a.ndim > 0), 1)
                self._counters.append((counter, batch))

        return hook

    def _done(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.count_ran and self._counters:
                counter, batch = self._counters.pop()
                counter.__exit__(None, None, None)
                self.ran_flops[name] += counter.get_total_flops() / batch  # per image, as the full call is counted

        return hook

    def ran_fraction(self, uncached: Any) -> dict[str, float]:
        """Per network, the FLOPs its counted calls ran over what as many full calls run (``uncached()``: the
        pipeline's context in which every call does its full work), both by ``FlopCounterMode``."""
        with uncached():
            full = {name: torch_flops(self.networks[name], self.first_inputs[name]) for name in self.ran_flops}
        return {name: self.ran_flops[name] / (self.ran_calls[name] * full[name]) if full[name] else 1.0
                for name in self.ran_flops}

    def reset(self) -> None:
        self.calls.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        while self._counters:  # a call that raised never reached its forward hook
            self._counters.pop()[0].__exit__(None, None, None)

    def flops_per_call(self, counted_on: dict[str, nn.Module] | None = None) -> dict[str, int]:
        """FLOPs of one call at batch 1 for every network that ran, by fvcore; a network in ``counted_on`` is
        counted on the network given there (``Pipeline.flops_counted_on``), with the inputs its own first call had."""
        twins = {name: getattr(net, "counted", net) for name, net in (counted_on or {}).items()}
        return {name: fvcore_flops(twins.get(name, self.networks[name]), inputs)
                for name, inputs in self.first_inputs.items()}


def _batch_one(args: tuple) -> tuple:
    batch = next((a.shape[0] for a in args if torch.is_tensor(a) and a.ndim > 0), None)
    return tuple(a[:1].detach().clone() if torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == batch
                 else a for a in args)
