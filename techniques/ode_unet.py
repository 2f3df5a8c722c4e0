"""ODE denoiser network: the continuous U-Net of "Beyond U" (Calvo-Ordonez et al., arXiv 2310.20092).

A U-Net whose residual blocks are neural-ODE blocks: each integrates dh/dτ = f(h, e_t) over τ ∈ [0, 1] with a
fixed-step solver, where (paper, Eq. for the ODE function)

    f(h, e_t) = act(Conv3×3(FiLM(Norm(act(Conv3×3(Norm(h)))), e_t))) + h,   FiLM(u, e) = u·(1 + scale(e)) + shift(e).

The time embedding e_t reaches *every* ODE function: the authors' public code never passes it, so that network
ignores t (a test checks that this one does not). Down/up-sampling is parameter-free bilinear interpolation, skips
are concatenations merged by 1×1 convs, and self-attention (the diffusers ``Attention`` block the baseline uses) sits
where the baseline U-Net has it. Levels, widths and attention placement are derived from the baseline's UNet2DModel
config, so the shipped ε-U-Net *is* the matched U-Net the parameter and FLOP ratios compare against.

The integrator is our own fixed-step Euler / midpoint / classical RK4 (a dozen lines) rather than torchdiffeq: only
fixed grids are needed, fvcore traces the unrolled steps so FLOPs include every function evaluation, there is no
per-call solver bookkeeping to bias latency at these tiny sizes, and no dependency is added (torchdiffeq's fixed
"rk4" is the 3/8 rule, not the classical one the paper names). The network is trained with one solver (the recipe's,
RK4 × 1 step as in the paper); ``solver``/``solver_steps`` at sampling time re-discretise the same trained ODE, which
changes latency and FLOPs, never the parameters.

Two comparisons (``proportions``): ``matched`` keeps the baseline's widths (the controlled question: what does an ODE
block cost at equal width?); ``paper`` proportions the network as the authors' code does against its baseline — every
level but the deepest at half width, one ODE block where a DDPM U-Net has two ResNet blocks — and is compared with a
base U-Net of two ResNet blocks per level (``model.layers_per_block = 2``), the pair behind the paper's "about a
quarter of the parameters" (their code: 0.25× parameters, 0.39× MACs). ``train_solver = "euler"`` trains the network
for the cheap solver (one Euler step makes each block a plain residual block, h + f(h)).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from bench.claims import CellRef, Claim
from bench.model import Denoiser, load_denoiser
from bench.technique import Pipeline, ReportSection, Technique
from bench.train import DiffusionObjective, register_objective
from bench.zoo import Recipe
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

SOLVERS = {"euler": 1, "midpoint": 2, "rk4": 4}  # solver → evaluations of f per step
TRAIN_SOLVER = ("rk4", 1)  # the paper's: one RK4 step per block
PROPORTIONS = ("matched", "paper")


def integrate(f: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, solver: str, steps: int) -> torch.Tensor:
    """h(1) for dh/dτ = f(h), h(0) = ``h``, with ``steps`` equal steps of ``solver``."""
    dt = 1.0 / steps
    for _ in range(steps):
        if solver == "euler":
            h = h + dt * f(h)
        elif solver == "midpoint":
            h = h + dt * f(h + 0.5 * dt * f(h))
        elif solver == "rk4":
            k1 = f(h)
            k2 = f(h + 0.5 * dt * k1)
            k3 = f(h + 0.5 * dt * k2)
            k4 = f(h + dt * k3)
            h = h + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        else:
            raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")
    return h


class ODEFunc(nn.Module):
    """f(h, e) = act(Conv(FiLM(Norm(act(Conv(Norm(h)))), e))) + h, FiLM from the (activated) time embedding."""

    def __init__(self, channels: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.film = nn.Linear(temb_dim, 2 * channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        u = F.silu(self.conv1(self.norm1(h)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        u = self.norm2(u) * (1 + scale) + shift
        return F.silu(self.conv2(u)) + h


class ODEBlock(nn.Module):
    """Integrates one ``ODEFunc`` over τ ∈ [0, 1]; the solver is a setting, not a parameter."""

    def __init__(self, channels: int, temb_dim: int, groups: int, solver: str, steps: int) -> None:
        super().__init__()
        self.func = ODEFunc(channels, temb_dim, groups)
        self.solver, self.steps = solver, steps

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return integrate(lambda y: self.func(y, temb), h, self.solver, self.steps)


def _attention(channels: int, head_dim: int, groups: int) -> Attention:
    # exactly as diffusers' AttnDownBlock2D/AttnUpBlock2D/UNetMidBlock2D build it for the baseline
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, rescale_output_factor=1.0, eps=1e-5,
                     norm_num_groups=groups, residual_connection=True, bias=True, upcast_softmax=True,
                     _from_deprecated_attn_block=True)


class ContinuousUNet(ModelMixin, ConfigMixin):
    """The continuous U-Net: level i runs at resolution/2^i with ``block_out_channels[i]`` channels; one ODE block
    per level on the way down and up and one in the middle; attention after the ODE block at ``attention_levels``
    and in the middle (where the baseline's mid block has it)."""

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 1, out_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (24, 48, 48), attention_levels: tuple[int, ...] = (2,),
                 norm_num_groups: int = 8, attention_head_dim: int = 8, solver: str = "rk4",
                 solver_steps: int = 1) -> None:
        super().__init__()
        widths = list(block_out_channels)
        temb_dim = 4 * widths[0]
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], temb_dim)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        def attn(level: int) -> nn.Module:
            return _attention(widths[level], attention_head_dim, norm_num_groups) if level in attention_levels \
                else nn.Identity()

        def ode(width: int) -> ODEBlock:
            return ODEBlock(width, temb_dim, norm_num_groups, solver, solver_steps)

        previous = widths[0]
        self.down_proj, self.down_ode, self.down_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(widths):
            self.down_proj.append(nn.Conv2d(previous, width, 1) if previous != width else nn.Identity())
            self.down_ode.append(ode(width))
            self.down_attn.append(attn(level))
            previous = width
        self.mid_ode = ode(widths[-1])
        self.mid_attn = _attention(widths[-1], attention_head_dim, norm_num_groups)
        self.up_merge, self.up_ode, self.up_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):  # stored deepest first, the order they run
            self.up_merge.append(nn.Conv2d(previous + widths[level], widths[level], 1))
            self.up_ode.append(ode(widths[level]))
            self.up_attn.append(attn(level))
            previous = widths[level]
        self.norm_out = nn.GroupNorm(norm_num_groups, widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def set_solver(self, solver: str, steps: int) -> None:
        """Re-discretise every ODE block (sampling-time knob; the weights are unchanged)."""
        if solver not in SOLVERS or steps < 1:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)} with steps >= 1, got {solver!r} × {steps}")
        for block in self.modules():
            if isinstance(block, ODEBlock):
                block.solver, block.steps = solver, steps

    def ode_blocks(self) -> int:
        return sum(isinstance(m, ODEBlock) for m in self.modules())

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = F.silu(self.time_embedding(self.time_proj(timestep.reshape(-1)).to(sample.dtype)))
        h = self.conv_in(sample)
        skips = []
        for level, (proj, ode, attn) in enumerate(zip(self.down_proj, self.down_ode, self.down_attn, strict=True)):
            if level:
                h = F.interpolate(h, scale_factor=0.5, mode="bilinear", align_corners=False)
            h = attn(ode(proj(h), temb))
            skips.append(h)
        h = self.mid_attn(self.mid_ode(h, temb))
        for merge, ode, attn in zip(self.up_merge, self.up_ode, self.up_attn, strict=True):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = attn(ode(merge(torch.cat([h, skip], dim=1)), temb))
        return self.conv_out(F.silu(self.norm_out(h)))


def matched_config(unet_config: dict[str, Any], proportions: str = "matched",
                   train_solver: str = TRAIN_SOLVER[0]) -> dict[str, Any]:
    """The continuous U-Net with the baseline UNet2DModel's levels, groups and attention placement; its widths
    (``matched``), or the authors' proportions of them (``paper``: every level but the deepest halved, as their
    32-64-128-256 levels and 512 bottleneck against the baseline's 64-128-256-512)."""
    down_types = unet_config.get("down_block_types", ())
    widths = list(unet_config["block_out_channels"])
    groups = unet_config.get("norm_num_groups", 32)
    if proportions == "paper":
        widths = [max(1, w // 2) for w in widths[:-1]] + widths[-1:]
        groups = math.gcd(groups, *widths)  # GroupNorm needs groups dividing every width
    return {"block_out_channels": widths,
            "attention_levels": [i for i, kind in enumerate(down_types) if kind.startswith("Attn")],
            "norm_num_groups": groups,
            "attention_head_dim": unet_config.get("attention_head_dim", 8),
            "solver": train_solver, "solver_steps": TRAIN_SOLVER[1]}


@register_objective("ode_epsilon")
class ODEEpsilonObjective(DiffusionObjective):
    """DDPM ε-training of the continuous U-Net (the baseline's loss; only the network differs)."""

    prediction_type = "epsilon"

    def build(self, recipe, image_shape, num_classes):
        net = ContinuousUNet(sample_size=recipe.resolution, in_channels=image_shape[0], out_channels=image_shape[0],
                             **recipe.network)
        return Denoiser(net, self.prediction_type, recipe.schedule, image_shape)

    def load(self, directory):
        return load_denoiser(directory, net_class=ContinuousUNet)


class ODEUNet(Technique):
    name = "ode_unet"
    version = 2  # 2: bench.train and bench.store restructured beneath it, not proven to leave results unchanged
    description = ("Continuous U-Net (Beyond U, Calvo-Ordonez et al.): neural-ODE blocks with FiLM time conditioning, "
                   "bilinear resampling, 1×1-merged skips; trained like the baseline; any step-reduction sampler.")

    @dataclass(frozen=True)
    class Params:
        solver: str = "rk4"  # euler | midpoint | rk4: the ODE blocks' fixed-step solver at sampling time
        solver_steps: int = 1  # solver steps per ODE block (the paper: 1 RK4 step)
        sampler: str = "ddim"  # any step_reduction sampler
        eta: float = 0.0
        timestep_spacing: str = "trailing"
        proportions: str = "matched"  # matched: the base U-Net's widths; paper: the authors' (see the module doc)
        train_solver: str = "rk4"  # the solver (one step per block) the network is trained with; the paper's is rk4

    def validate(self, params: Params) -> None:
        if params.solver not in SOLVERS:
            raise ValueError(f"solver {params.solver!r} is not one of {', '.join(SOLVERS)}")
        if params.train_solver not in SOLVERS:
            raise ValueError(f"train_solver {params.train_solver!r} is not one of {', '.join(SOLVERS)}")
        if params.proportions not in PROPORTIONS:
            raise ValueError(f"proportions {params.proportions!r} is not one of {', '.join(PROPORTIONS)}")
        if not 1 <= params.solver_steps <= 64:
            raise ValueError(f"solver_steps {params.solver_steps} is outside 1..64")
        validate_sampler(params.sampler, params.eta, params.timestep_spacing)

    def artifacts(self, params: Params, base: Recipe) -> dict[str, Recipe]:
        if "block_out_channels" not in base.network:
            raise ValueError("ode_unet trains a continuous U-Net matched to the base model's UNet2DModel config; this "
                             "base has no block_out_channels")
        # same data, steps, batch, seed and schedule as the baseline; the network is the continuous U-Net derived
        # from its config (the default variant keeps the name and address it always had)
        suffix = ("-paper" if params.proportions == "paper" else "") + (
            f"-{params.train_solver}" if params.train_solver != TRAIN_SOLVER[0] else "")
        network = matched_config(base.network, params.proportions, params.train_solver)
        name = re.sub(r"-lpb\d+", "", base.name)  # one ODE block per level whatever the base's depth
        return {"ode": dataclasses.replace(base, name=name.replace("-unet", f"-odeunet{suffix}"),
                                           objective="ode_epsilon", network=network)}

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        ode = models["ode"]
        ode.net.set_solver(params.solver, params.solver_steps)
        trained = (ode.net.config.solver, ode.net.config.solver_steps)
        info = {"scheduler": SAMPLERS[params.sampler][0].__name__, "timestep_spacing": params.timestep_spacing,
                "solver": params.solver, "solver_steps": params.solver_steps,
                "trained_with": f"{trained[0]} x {trained[1]}",
                "ode_function_evals_per_call": ode.net.ode_blocks() * SOLVERS[params.solver] * params.solver_steps,
                "proportions": params.proportions, "matched_unet": matched_unet_cost(models["model"], ode)}
        return Pipeline(sample=make_sampler(ode, params.sampler, steps, params.eta, params.timestep_spacing),
                        networks={"model": ode}, info=info)

    def report_sections(self, rows: Any) -> list[ReportSection]:
        import pandas as pd

        rows = rows[rows["status"] == "ok"]
        if rows.empty:
            return []
        rows = rows.assign(  # records from before the variants existed are the default variant
            param_proportions=rows.get("param_proportions", pd.Series(index=rows.index, dtype=object)).fillna(
                "matched"),
            param_train_solver=rows.get("param_train_solver", pd.Series(index=rows.index, dtype=object)).fillna(
                TRAIN_SOLVER[0]))
        table = []
        keys = ["param_proportions", "param_train_solver", "param_solver", "param_solver_steps"]
        for (proportions, train_solver, solver, solver_steps), group in rows.groupby(keys):
            r = group.iloc[0]
            matched = r["info"].get("matched_unet") or {}
            table.append({"network": f"{proportions}, trained {train_solver} x 1",
                          "solver": f"{solver} x {int(solver_steps)}",
                          "f evals / call": r["info"].get("ode_function_evals_per_call"),
                          "params": int(r["params_total"]),
                          "params / base U-Net": _ratio(r["params_total"], matched.get("params")),
                          "MFLOPs / call": r["flops_per_call"] / 1e6,
                          "FLOPs / base U-Net": _ratio(r["flops_per_call"], matched.get("flops_per_call"))})
        text = ("Against the sweep's base U-Net, counted at batch 1 with fvcore (FLOPs = 2 x MACs), every ODE "
                "function evaluation included. 'matched': the base's levels, widths and attention placement (the "
                "controlled comparison). 'paper': the authors' proportions (every level but the deepest at half "
                "width), meant against a base of two ResNet blocks per level (model.layers_per_block = 2): the "
                "paper's comparison, whose own code gives 0.25x the parameters and 0.39x the MACs (counted without "
                "attention) at 64x64. Latency ratios at batch 1 and 64: tests/benchmarks/ode_unet_ratios.py.")
        return [ReportSection("cost against the base U-Net", text, tables=[pd.DataFrame(table)])]


def matched_unet_cost(baseline: Any, ode: Denoiser) -> dict[str, Any]:
    """Parameters and FLOPs per call (batch 1) of the U-Net the ODE network is compared with: the base model, when
    it is a UNet2DModel with as many levels (its widths for ``matched``, its proportions for ``paper``)."""
    from bench.measure.flops import fvcore_flops

    net = getattr(baseline, "net", None)
    levels = len(ode.net.config.block_out_channels)
    if net is None or len(getattr(net.config, "block_out_channels", ())) != levels:
        return {}
    device = next(baseline.parameters()).device
    x, t = torch.zeros(1, *ode.image_shape, device=device), torch.full((1,), 500, device=device)
    return {"params": sum(p.numel() for p in baseline.parameters()),
            "flops_per_call": fvcore_flops(baseline.eval(), (x, t))}


def _ratio(a: float, b: float | None) -> float | None:
    return round(float(a) / float(b), 3) if b else None


_MATCHED_RECIPE = ("ours (matched): the base U-Net's widths, one ODE block per level, against the U-Net with one "
                   "block per level")
_PAPER_RECIPE = ("paper's comparison: the authors' proportions (12-24-48) against a U-Net with two ResNet blocks "
                 "per level")
_CLAIM_CELLS = ((_MATCHED_RECIPE, CellRef("ode_unet", "ode_unet", 10, {"sampler": "ddim", "solver": "rk4"}),
                 CellRef("ode_unet", "step_reduction", 10, {"sampler": "ddim"})),
                (_PAPER_RECIPE, CellRef("ode_unet_paper", "ode_unet", 10, {"proportions": "paper"}),
                 CellRef("ode_unet_paper", "step_reduction", 10, {"sampler": "ddim"})))
ODEUNet.claims = (
    *(Claim("≈ 1/4 of the U-Net's parameters (Calvo-Ordonez et al.; the authors' code: 0.247×)", recipe, "ratio",
            cand, ref, "params_total", 0.247) for recipe, cand, ref in _CLAIM_CELLS),
    *(Claim("≈ 30–40% of the U-Net's FLOPs (the authors' code, MACs without attention: 0.393×)", recipe, "ratio",
            cand, ref, "flops_per_image", 0.393) for recipe, cand, ref in _CLAIM_CELLS),
    *(Claim("faster inference than the U-Net in equal conditions (Calvo-Ordonez et al., abstract)", recipe,
            "latency", cand, ref) for recipe, cand, ref in _CLAIM_CELLS),
)
ODEUNet.model_kinds_reason = (
    "its continuous-time network has no label input")
