"""Dynamic dual-output denoiser (Benny & Wolf, CVPR 2022).

The baseline network with 2C+1 output channels: a direct x̂_0 head, an ε̂ head and one gate logit r. With
a_t = √ᾱ_t, s_t = √(1−ᾱ_t) and g = sigmoid(r), per pixel and step:

    x0_from_eps = (x_t − s_t ε̂)/a_t,    x0_mix = g x̂_0 + (1−g) x0_from_eps.

Training (the paper's Eq. 8, reference code ``yanivbenny/dual_diffusion``): three equal-weight MSE terms,
‖x_0 − x̂_0‖² + ‖ε − ε̂‖² + ‖μ̃(x_0, x_t) − μ(x0_mix, x_t)‖², with both heads detached inside x0_mix so the
posterior-mean term trains only the gate.

Sampling: the gated network is presented to the harness's schedulers as an ε-predictor,
ε_mix = (x_t − a_t x0_mix)/s_t, so a scheduler that turns ε into x̂_0 recovers exactly x0_mix. With DDIM this is
the paper's rule, x_prev = a_prev·clip(x0_mix) + √(1−ᾱ_prev) ε_mix (η > 0 gives the ancestral variant), and every
other step-reduction sampler composes with it. The ablations (ε head only, x̂_0 head only, a gate fixed per
timestep) are a ``mode`` of the same trained network, not separate copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.model import Denoiser, build_unet
from bench.sampling import generators
from bench.technique import Pipeline, ReportSection, Technique
from bench.train import DiffusionObjective, register_objective
from bench.zoo import Recipe
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

PREDICTION = "dual"  # output layout: x̂_0 (C) | ε̂ (C) | gate logit (1), stacked on channels
MODES = ("dual", "eps", "x0", "fixed_gate")
# The fixed-gate ablation's g(t) is the per-pixel gate's mean per timestep on these seeds' trajectories: disjoint
# from the evaluation seeds, so the ablation never sees the images it is scored on.
CALIBRATION_SEEDS = range(10**9, 10**9 + 64)


def _alphas_cumprod(schedule: dict[str, Any]) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(schedule).alphas_cumprod.float()


def split_heads(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂, gate logit) from the network's 2C+1 output channels."""
    return out[:, :channels], out[:, channels:2 * channels], out[:, 2 * channels:2 * channels + 1]


@register_objective("dual_output")
class DualOutputObjective(DiffusionObjective):
    prediction_type = PREDICTION

    def build(self, recipe, image_shape, num_classes):
        channels = image_shape[0]
        net = build_unet({"sample_size": recipe.resolution, "in_channels": channels,
                          **recipe.network, "out_channels": 2 * channels + 1})
        return Denoiser(net, PREDICTION, recipe.schedule, image_shape)

    def loss(self, model, x0, labels, generator):
        ac = _alphas_cumprod(model.scheduler_config)
        t = torch.randint(0, len(ac), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = ac[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * noise
        return sum(dual_losses(model(x_t, t), x0, x_t, noise, ac[t], _alpha_bar_prev(ac)[t]).values())


def _alpha_bar_prev(ac: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(1), ac[:-1]])


def dual_losses(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                alpha_bar_prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three equal-weight terms for network output ``out`` at x_t = √ᾱ x_0 + √(1−ᾱ) ε (ᾱ per sample)."""
    view = (-1, 1, 1, 1)
    a, s = alpha_bar.sqrt().view(view), (1 - alpha_bar).sqrt().view(view)
    x0_hat, eps_hat, logit = split_heads(out, x0.shape[1])
    gate = torch.sigmoid(logit)
    x0_mix = gate * x0_hat.detach() + (1 - gate) * ((x_t - s * eps_hat) / a).detach()
    # DDPM posterior mean μ(x_0, x_t) = c1 x_0 + c2 x_t: both means share c2 x_t, so the term is ‖c1 (x_0 − x0_mix)‖²
    beta = 1 - alpha_bar / alpha_bar_prev
    c1 = (beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)).view(view)
    return {"x0": F.mse_loss(x0_hat, x0), "eps": F.mse_loss(eps_hat, noise),
            "posterior_mean": F.mse_loss(c1 * x0_mix, c1 * x0)}


class GatedEpsilon(nn.Module):
    """The dual network seen as an ε-predictor (see the module docstring); records the mean gate per timestep."""

    def __init__(self, dual: Denoiser, mode: str, gate_table: dict[float, float] | None = None) -> None:
        super().__init__()
        self.dual, self.mode, self.gate_table = dual, mode, gate_table
        self.image_shape = dual.image_shape
        self.prediction_type = "epsilon"
        self.scheduler_config = {**dual.scheduler_config, "prediction_type": "epsilon"}
        self.register_buffer("alphas_cumprod", _alphas_cumprod(dual.scheduler_config), persistent=False)
        self._seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        # σ-space schedulers (Euler, Heun) call at fractional timesteps: interpolate ᾱ between the integer ones
        t = t.float().clamp(0, len(self.alphas_cumprod) - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(self.alphas_cumprod) - 1)
        frac = t - lo
        return torch.lerp(self.alphas_cumprod[lo], self.alphas_cumprod[hi], frac)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        x0_hat, eps_hat, logit = split_heads(self.dual(x, t).float(), x.shape[1])
        ac = self._alpha_bar(t).view(-1, 1, 1, 1)
        a, s = ac.sqrt(), (1 - ac).sqrt()
        x = x.float()
        x0_from_eps = (x - s * eps_hat) / a
        if self.mode == "eps":
            gate = torch.zeros_like(logit)
        elif self.mode == "x0":
            gate = torch.ones_like(logit)
        elif self.mode == "fixed_gate":
            gate = torch.full_like(logit, self.gate_table[round(float(t[0]), 3)])
        else:
            gate = torch.sigmoid(logit)
        # tensors only: no host sync inside the timed loop
        self._seen.append((t[0].detach(), gate.mean(dim=(1, 2, 3)).sum().detach(), x.shape[0]))
        x0_mix = gate * x0_hat + (1 - gate) * x0_from_eps
        return (x - a * x0_mix) / s

    def gate_curve(self) -> list[list[float]]:
        """[[timestep, mean gate over every pixel and sample it was called on], ...] from high to low noise; then
        forgets what it saw."""
        sums: dict[float, list[float]] = {}
        for t, total, n in self._seen:
            acc = sums.setdefault(round(float(t), 3), [0.0, 0])
            acc[0], acc[1] = acc[0] + float(total), acc[1] + n
        self._seen = []
        return [[t, total / n] for t, (total, n) in sorted(sums.items(), reverse=True)]


class DualOutput(Technique):
    name = "dual_output"
    description = ("Dynamic dual-output denoiser (Benny & Wolf 2022): x̂_0 and ε heads mixed by a learned per-pixel "
                   "gate; ablations ε-only, x̂_0-only, fixed gate per timestep.")

    @dataclass(frozen=True)
    class Params:
        mode: str = "dual"  # dual (learned per-pixel gate) | eps | x0 (one head only) | fixed_gate (g(t), no pixel)
        sampler: str = "ddim"  # any step_reduction sampler; ddim is the paper's rule
        eta: float = 0.0  # DDIM η: 0 deterministic, 1 ancestral
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        if params.mode not in MODES:
            raise ValueError(f"mode {params.mode!r} is not one of {', '.join(MODES)}")
        validate_sampler(params.sampler, params.eta, params.timestep_spacing)

    def artifacts(self, params: Params, base: Recipe) -> dict[str, Recipe]:
        # same network width and depth, data, steps, batch and seed as the baseline: only the head and loss differ
        return {"dual": dataclasses.replace(base, name=base.name.replace(base.objective, "dual"),
                                            objective="dual_output")}

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        dual = models["dual"]
        table = None
        if params.mode == "fixed_gate":
            probe = GatedEpsilon(dual, "dual")
            with torch.no_grad():
                make_sampler(probe, params.sampler, steps, params.eta, params.timestep_spacing)(
                    generators(CALIBRATION_SEEDS), None)
            table = dict(probe.gate_curve())
        gated = GatedEpsilon(dual, params.mode, table)
        sample = make_sampler(gated, params.sampler, steps, params.eta, params.timestep_spacing)
        info = {"scheduler": SAMPLERS[params.sampler][0].__name__, "timestep_spacing": params.timestep_spacing,
                "mode": params.mode}
        if table is not None:
            info["fixed_gate_calibration"] = {"seeds": f"{CALIBRATION_SEEDS.start}..{CALIBRATION_SEEDS.stop - 1}",
                                              "gate_by_timestep": sorted(table.items(), reverse=True)}
        return Pipeline(sample=sample, networks={"model": gated}, info=info,
                        observe=lambda: {"gate_curve": gated.gate_curve()})

    def report_sections(self, rows: Any) -> list[ReportSection]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        rows = rows.drop_duplicates(["param_mode", "param_sampler", "param_eta", "steps"])  # one per image set
        sections = []
        curves = [(r, r["observations"]["gate_curve"]) for _, r in rows.sort_values("steps").iterrows()
                  if r["param_mode"] == "dual" and isinstance(r.get("observations"), dict)
                  and r["observations"].get("gate_curve")]
        if curves:
            fig, ax = plt.subplots(figsize=(6.4, 3.6))
            for r, curve in curves:
                t, g = zip(*curve, strict=True)
                ax.plot(t, g, marker="o", ms=3, lw=1, label=f"{r['steps']} steps, {r['param_sampler']}")
            ax.set_xlim(1000, 0)
            ax.set_ylim(0, 1)
            ax.set_xlabel("timestep t (left: pure noise, right: clean)")
            ax.set_ylabel("mean gate g")
            ax.set_title("learned gate: 1 = use the x̂_0 head, 0 = use the ε head", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            longest = curves[-1][1]
            text = (f"Mean of the per-pixel gate over every generated image, at each sampling timestep. With "
                    f"{curves[-1][0]['steps']} steps it is {longest[0][1]:.2f} at t = {longest[0][0]:g} and "
                    f"{longest[-1][1]:.2f} at t = {longest[-1][0]:g}; the paper expects near 1 at high noise and "
                    "near 0 at low noise.")
            sections.append(ReportSection("gate per timestep", text, figures=[fig]))
        if "fid" in rows:
            table = rows.assign(cell=[f"{f:.2f} [{lo:.2f}, {hi:.2f}]" for f, lo, hi in
                                      zip(rows["fid"], rows["fid_ci_low"], rows["fid_ci_high"], strict=True)])
            pivot = table.pivot_table(index=["param_mode", "param_sampler"], columns="steps", values="cell",
                                      aggfunc="first").reset_index()
            pivot.columns = ["mode", "sampler", *(f"FID @ {c} steps" for c in pivot.columns[2:])]
            sections.append(ReportSection("ablations: FID [95% CI] by mode and steps",
                                          "Same trained network; the mode picks the heads (eps, x0), a gate fixed "
                                          "per timestep (fixed_gate) or the learned per-pixel gate (dual).",
                                          tables=[pd.DataFrame(pivot)]))
        return sections
