"""Dynamic dual-output denoiser (Benny & Wolf, CVPR 2022).

The baseline network with 2C+1 output channels: a direct x̂_0 head, an ε̂ head and one gate logit r. With
a_t = √ᾱ_t, s_t = √(1−ᾱ_t) and g = sigmoid(r), per pixel and step:

    x0_from_eps = (x_t − s_t ε̂)/a_t,    x0_mix = g x̂_0 + (1−g) x0_from_eps.

Training (the paper's Eq. 8, reference code ``yanivbenny/dual_diffusion``): three equal-weight MSE terms,
‖x_0 − x̂_0‖² + ‖ε − ε̂‖² + ‖μ̃(x_0, x_t) − μ(x0_mix, x_t)‖², with both heads detached inside x0_mix so the
posterior-mean term trains only the gate. That term is c1_t²‖x_0 − x0_mix‖², c1_t = β_t√ᾱ_{t−1}/(1−ᾱ_t): c1_t² falls
from 1 at t = 0 to 1e-8 at t = 999, so nearly all of the gate's gradient comes from t ≲ 20 and a short run learns one
global bias instead of the paper's t-dependence (fidelity audit §1.3). ``gate_loss = "balanced"`` divides the term by
c1_t² (the minimiser is the same, c1_t being a positive scalar per t; only the optimisation path changes).
``init = "dual"`` fine-tunes only the gate channel of the shipped dual network (heads and trunk frozen: the audit's
D1); ``init = "baseline"`` starts from the base ε-model (trunk and ε channels copied, x̂_0 and gate channels fresh,
gate bias 0; lr 2e-4, the paper's: D2), so both heads start at least as good as the baseline's.

Sampling: the gated network is presented to the harness's schedulers as an ε-predictor,
ε_mix = (x_t − a_t x0_mix)/s_t, so a scheduler that turns ε into x̂_0 recovers exactly x0_mix. With DDIM this is
the paper's rule, x_prev = a_prev·clip(x0_mix) + √(1−ᾱ_prev) ε_mix (η > 0 gives the ancestral variant), and every
other step-reduction sampler composes with it. The ablations (ε head only, x̂_0 head only, a gate fixed per
timestep) are a ``mode`` of the same trained network, not separate copies. The fixed gate is the paper's time-only
gate r_t: fitted by least squares per timestep on training images (the minimiser of the gate term for a gate that sees
only t, whatever the weighting), kept as its own zoo artifact beside the network; the report draws it as the
reference the learned gate should approach.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.claims import CellRef, Claim
from bench.errors import UserError
from bench.model import Denoiser, build_unet
from bench.technique import Pipeline, ReportSection, Technique
from bench.train import DiffusionObjective, Objective, register_objective
from bench.zoo import Recipe
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

PREDICTION = "dual"  # output layout: x̂_0 (C) | ε̂ (C) | gate logit (1), stacked on channels
MODES = ("dual", "eps", "x0", "fixed_gate")
INITS, GATE_LOSSES = ("scratch", "dual", "baseline"), ("paper", "balanced")
# Budgets as fractions of the base recipe's steps (at the shipped 4000: 1000 for the gate fine-tune, 2000 for the
# warm start), with the warm start at the paper's learning rate.
GATE_TUNE_FRACTION, WARM_FRACTION, WARM_LR = 0.25, 0.5, 2e-4
# The time-only gate is fitted on this many training images per timestep, every TIME_GATE_STRIDE timesteps (and at
# T−1), linear in t between them.
TIME_GATE_IMAGES, TIME_GATE_STRIDE = 256, 10


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
        self.balanced = recipe.options.get("gate_loss", "paper") == "balanced"
        init = recipe.options.get("init", "scratch")
        if init == "dual":  # only the gate's output channel learns: trunk and both heads stay as trained
            model = self.source(recipe.options["source"])
            model.requires_grad_(False)
            head = model.net.conv_out
            head.requires_grad_(True)
            keep = torch.zeros(head.out_channels, 1, 1, 1)
            keep[2 * channels:] = 1.0
            head.weight.register_hook(lambda grad: grad * keep)
            head.bias.register_hook(lambda grad: grad * keep.flatten())
            return model
        net = build_unet({"sample_size": recipe.resolution, "in_channels": channels,
                          **recipe.network, "out_channels": 2 * channels + 1})
        if init == "baseline":
            source = self.source(recipe.options["source"])
            if source.prediction_type != "epsilon":
                raise UserError(f"dual_output init = baseline copies an ε-model's output channels into the ε head; "
                                f"the base model predicts {source.prediction_type!r}")
            base = source.net
            own = net.state_dict()
            for name, value in base.state_dict().items():
                if not name.startswith("conv_out."):
                    own[name] = value
            own["conv_out.weight"][channels:2 * channels] = base.conv_out.weight
            own["conv_out.bias"][channels:2 * channels] = base.conv_out.bias
            own["conv_out.bias"][2 * channels:] = 0.0  # the gate starts at 0.5
            net.load_state_dict(own)
        return Denoiser(net, PREDICTION, recipe.schedule, image_shape)

    def loss(self, model, x0, labels, generator):
        ac = _alphas_cumprod(model.scheduler_config)
        t = torch.randint(0, len(ac), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = ac[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * noise
        return sum(dual_losses(model(x_t, t), x0, x_t, noise, ac[t], _alpha_bar_prev(ac)[t],
                               balanced=self.balanced).values())


def _alpha_bar_prev(ac: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(1), ac[:-1]])


def dual_losses(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                alpha_bar_prev: torch.Tensor, balanced: bool = False) -> dict[str, torch.Tensor]:
    """The three equal-weight terms for network output ``out`` at x_t = √ᾱ x_0 + √(1−ᾱ) ε (ᾱ per sample);
    ``balanced`` divides the gate term by c1_t² (the same minimiser, gradient at every t)."""
    view = (-1, 1, 1, 1)
    a, s = alpha_bar.sqrt().view(view), (1 - alpha_bar).sqrt().view(view)
    x0_hat, eps_hat, logit = split_heads(out, x0.shape[1])
    gate = torch.sigmoid(logit)
    x0_mix = gate * x0_hat.detach() + (1 - gate) * ((x_t - s * eps_hat) / a).detach()
    # DDPM posterior mean μ(x_0, x_t) = c1 x_0 + c2 x_t: both means share c2 x_t, so the term is ‖c1 (x_0 − x0_mix)‖²
    beta = 1 - alpha_bar / alpha_bar_prev
    c1 = 1.0 if balanced else (beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)).view(view)
    return {"x0": F.mse_loss(x0_hat, x0), "eps": F.mse_loss(eps_hat, noise),
            "posterior_mean": F.mse_loss(c1 * x0_mix, c1 * x0)}


@register_objective("dual_time_gate")
class TimeGateObjective(Objective):
    """The paper's time-only gate r_t for a trained dual network: per timestep, the least-squares mix of its two
    x̂_0 estimates on training images, r_t = clip(⟨x_0 − x̂_ε, x̂ − x̂_ε⟩ / ‖x̂ − x̂_ε‖², 0, 1) — where a time-only
    gate trained on the gate term converges, whatever the term's weighting. Fitted, not optimised."""

    trains = False

    def build(self, recipe, image_shape, num_classes):
        from bench import data

        dual = self.source(recipe.options["dual"]).eval()
        images = data.load(recipe.dataset, "train", recipe.resolution).images
        generator = torch.Generator().manual_seed(recipe.seed)
        pick = torch.randperm(len(images), generator=generator)[:TIME_GATE_IMAGES]
        x0 = images[pick].float() / 127.5 - 1.0
        ac = _alphas_cumprod(dual.scheduler_config)
        timesteps = sorted({*range(0, len(ac), TIME_GATE_STRIDE), len(ac) - 1})
        table, start = [], time.perf_counter()
        with torch.no_grad():
            for t in timesteps:
                a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
                x_t = a * x0 + s * torch.randn(x0.shape, generator=generator)
                x0_hat, eps_hat, _ = split_heads(dual(x_t, t).float(), x0.shape[1])
                x0_eps = (x_t - s * eps_hat) / a
                d = x0_hat - x0_eps
                r = float(((x0 - x0_eps) * d).sum() / (d * d).sum().clamp_min(1e-12))
                table.append([t, min(1.0, max(0.0, r))])
        self.build_wall_s = time.perf_counter() - start
        return TimeGate(table)

    def save(self, model, directory):
        path = directory / "time_gate.json"
        path.write_text(json.dumps({"images": TIME_GATE_IMAGES, "gate_by_timestep": model.table}, indent=1))
        return path

    def load(self, directory):
        return TimeGate(json.loads((directory / "time_gate.json").read_text())["gate_by_timestep"])


class TimeGate(nn.Module):
    """r(t) from a table of [timestep, gate] rows, linear in t between them (σ-space samplers call between integers);
    a module of buffers, so it moves to the cell's device with the network and r(t) needs no host sync."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = [[int(t), float(g)] for t, g in table]
        self.register_buffer("timesteps", torch.tensor([t for t, _ in self.table], dtype=torch.float32))
        self.register_buffer("gates", torch.tensor([g for _, g in self.table], dtype=torch.float32))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float().clamp(self.timesteps[0], self.timesteps[-1])
        hi = torch.searchsorted(self.timesteps, t).clamp(1, len(self.timesteps) - 1)
        lo = hi - 1
        frac = (t - self.timesteps[lo]) / (self.timesteps[hi] - self.timesteps[lo])
        return torch.lerp(self.gates[lo], self.gates[hi], frac)


class GatedEpsilon(nn.Module):
    """The dual network seen as an ε-predictor (see the module docstring); records the mean gate per timestep."""

    def __init__(self, dual: Denoiser, mode: str, time_gate: TimeGate | None = None) -> None:
        super().__init__()
        self.dual, self.mode, self.time_gate = dual, mode, time_gate
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
            gate = self.time_gate(t).to(logit).view(-1, 1, 1, 1).expand_as(logit)
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


def dual_recipe(base: Recipe, init: str = "scratch", gate_loss: str = "paper") -> Recipe:
    """The dual network's recipe: the base's width, depth, data, batch and seed (only the head and loss differ); the
    shipped one from scratch, or a gate fine-tune of it, or a warm start from the base ε-model."""
    scratch = dataclasses.replace(base, name=base.name.replace(base.objective, "dual"), objective="dual_output")
    if init == "scratch" and gate_loss == "paper":
        return scratch  # the shipped recipe: its options (hence its address) stay as they were
    options: dict[str, Any] = {"gate_loss": gate_loss, "init": init}
    if init == "dual":
        options["source"] = scratch.to_dict()
        return dataclasses.replace(scratch, name=f"{scratch.name}-gatetune-{gate_loss}", options=options,
                                   steps=max(1, round(base.steps * GATE_TUNE_FRACTION)))
    if init == "baseline":
        options["source"] = base.to_dict()
        return dataclasses.replace(scratch, name=f"{scratch.name}-warm-{gate_loss}", options=options, lr=WARM_LR,
                                   steps=max(1, round(base.steps * WARM_FRACTION)))
    return dataclasses.replace(scratch, name=f"{scratch.name}-{gate_loss}", options=options)


class DualOutput(Technique):
    name = "dual_output"
    version = 2  # 2: bench.train and bench.store restructured beneath it, not proven to leave results unchanged
    description = ("Dynamic dual-output denoiser (Benny & Wolf 2022): x̂_0 and ε heads mixed by a learned per-pixel "
                   "gate; ablations ε-only, x̂_0-only, the time-only gate; the gate trained as the paper's code or "
                   "balanced over t, from scratch, as a gate fine-tune or warm-started from the baseline.")
    contract_variants = ({"init": "dual", "gate_loss": "balanced"}, {"init": "baseline", "gate_loss": "balanced"})

    @dataclass(frozen=True)
    class Params:
        mode: str = "dual"  # dual (learned per-pixel gate) | eps | x0 (one head only) | fixed_gate (g(t), no pixel)
        sampler: str = "ddim"  # any step_reduction sampler; ddim is the paper's rule
        eta: float = 0.0  # DDIM η: 0 deterministic, 1 ancestral
        timestep_spacing: str = "trailing"
        init: str = "scratch"  # scratch (the shipped network) | dual (gate fine-tune of it) | baseline (warm start)
        gate_loss: str = "paper"  # paper (c1_t²-weighted, the official code's) | balanced (÷ c1_t²)

    def validate(self, params: Params) -> None:
        if params.mode not in MODES:
            raise ValueError(f"mode {params.mode!r} is not one of {', '.join(MODES)}")
        if params.init not in INITS:
            raise ValueError(f"init {params.init!r} is not one of {', '.join(INITS)}")
        if params.gate_loss not in GATE_LOSSES:
            raise ValueError(f"gate_loss {params.gate_loss!r} is not one of {', '.join(GATE_LOSSES)}")
        validate_sampler(params.sampler, params.eta, params.timestep_spacing)

    def artifacts(self, params: Params, base: Recipe) -> dict[str, Recipe]:
        dual = dual_recipe(base, params.init, params.gate_loss)
        if params.mode != "fixed_gate":
            return {"dual": dual}
        gate = dataclasses.replace(dual, name=f"{dual.name}-timegate", objective="dual_time_gate", steps=0,
                                   options={"dual": dual.to_dict()})
        return {"dual": dual, "time_gate": gate}

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        dual = models["dual"]
        gated = GatedEpsilon(dual, params.mode, models.get("time_gate"))
        sample = make_sampler(gated, params.sampler, steps, params.eta, params.timestep_spacing)
        info = {"scheduler": SAMPLERS[params.sampler][0].__name__, "timestep_spacing": params.timestep_spacing,
                "mode": params.mode}
        if gated.time_gate is not None:
            info["time_gate"] = gated.time_gate.table[::-1]
        return Pipeline(sample=sample, networks={"model": gated}, info=info,
                        observe=lambda: {"gate_curve": gated.gate_curve()})

    def report_sections(self, rows: Any) -> list[ReportSection]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        rows = rows.copy()
        for column, default in (("param_init", "scratch"), ("param_gate_loss", "paper")):
            rows[column] = rows[column].fillna(default) if column in rows else default  # recorded before the knob
        rows["training"] = [training_label(i, g) for i, g in zip(rows["param_init"], rows["param_gate_loss"],
                                                                 strict=True)]
        rows = rows.drop_duplicates(["training", "param_mode", "param_sampler", "param_eta", "steps"])
        sections = []
        curves = {}  # training → (steps, learned gate curve), at the most steps each training was sampled with
        for _, r in rows.sort_values("steps").iterrows():
            if (r["param_mode"] == "dual" and isinstance(r.get("observations"), dict)
                    and r["observations"].get("gate_curve")):
                curves[r["training"]] = (r["steps"], r["observations"]["gate_curve"])
        fitted = {r["training"]: r["info"]["time_gate"] for _, r in rows.iterrows()
                  if isinstance(r.get("info"), dict) and r["info"].get("time_gate")}
        if curves:
            fig, ax = plt.subplots(figsize=(6.4, 3.8))
            lines = []
            for i, (training, (steps, curve)) in enumerate(sorted(curves.items())):
                colour = f"C{i}"
                t, g = zip(*curve, strict=True)
                ax.plot(t, g, marker="o", ms=3, lw=1, color=colour, label=f"learned: {training} ({steps} steps)")
                if training in fitted:
                    ft, fg = zip(*fitted[training], strict=True)
                    ax.plot(ft, fg, ls="--", lw=1, color=colour, label=f"least-squares r_t: {training}")
                lines.append(f"{training}: {curve[0][1]:.2f} at t = {curve[0][0]:g}, {curve[-1][1]:.2f} at "
                             f"t = {curve[-1][0]:g}")
            ax.set_xlim(1000, 0)
            ax.set_ylim(0, 1)
            ax.set_xlabel("timestep t (left: pure noise, right: clean)")
            ax.set_ylabel("mean gate g")
            ax.set_title("gate: 1 = use the x̂_0 head, 0 = use the ε head", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
            text = ("Mean of the per-pixel gate over every generated image at each sampling timestep (solid), per "
                    "training of the dual network, and the time-only gate fitted by least squares on training "
                    "images (dashed): where a gate that sees only t converges, the reference a learned gate should "
                    "approach. The paper expects near 1 at high noise and near 0 at low noise. " + "; ".join(lines)
                    + ".")
            sections.append(ReportSection("gate per timestep", text, figures=[fig]))
        if "fid" in rows:
            table = rows.assign(cell=[f"{f:.2f} [{lo:.2f}, {hi:.2f}]" for f, lo, hi in
                                      zip(rows["fid"], rows["fid_ci_low"], rows["fid_ci_high"], strict=True)])
            pivot = table.pivot_table(index=["training", "param_mode", "param_sampler"], columns="steps",
                                      values="cell", aggfunc="first").reset_index()
            pivot.columns = ["training", "mode", "sampler", *(f"FID @ {c} steps" for c in pivot.columns[3:])]
            sections.append(ReportSection("ablations: FID [95% CI] by training, mode and steps",
                                          "Each training is one network; the mode picks the heads (eps, x0), the "
                                          "time-only least-squares gate r_t (fixed_gate) or the learned per-pixel "
                                          "gate (dual).", tables=[pd.DataFrame(pivot)]))
        return sections


def training_label(init: str, gate_loss: str) -> str:
    """How a dual network was trained, in the report's words."""
    start = {"scratch": "from scratch", "dual": "gate fine-tune", "baseline": "warm start"}.get(init, init)
    return f"{start}, {gate_loss} gate loss"


_MATCHED_RECIPE = "ours (matched budget): from scratch, 4000 × 64, the official loss"
_GATE_TUNE_PAPER = "gate fine-tune of ours with the official, c1²-weighted gate term (control)"
_GATE_TUNE_BALANCED = "gate fine-tune of ours with the gate term balanced over t (audit D1)"
_WARM_START_RECIPE = ("nearest the paper's the budget allows (audit D2): warm start from the baseline, balanced "
                      "gate term, lr 2e-4 (the paper: 1M × 128 from scratch)")
DualOutput.claims = (
    *(Claim(f"dual-output beats its DDIM baseline at {n} steps (Benny & Wolf 2022, CIFAR-10: {dual} vs {ddim})",
            recipe, "quality", CellRef("dual_output", "dual_output", n, {"mode": "dual", **sel}),
            CellRef("dual_output", "step_reduction", n, {"sampler": "ddim"}))
      for n, dual, ddim in ((5, 35.1, 49.7), (10, 11.7, 18.6), (20, 8.6, 10.9))
      for recipe, sel in ((_MATCHED_RECIPE, {"init": "scratch", "gate_loss": "paper"}),
                          (_WARM_START_RECIPE, {"init": "baseline", "gate_loss": "balanced"}))),
    *(Claim("the learned gate trusts x̂_0 at high noise and ε at low noise (Benny & Wolf 2022, their gate plot)",
            recipe, "gate", CellRef("dual_output", "dual_output", 20, {"mode": "dual", **sel}))
      for recipe, sel in ((_MATCHED_RECIPE, {"init": "scratch", "gate_loss": "paper"}),
                          (_GATE_TUNE_PAPER, {"init": "dual", "gate_loss": "paper"}),
                          (_GATE_TUNE_BALANCED, {"init": "dual", "gate_loss": "balanced"}),
                          (_WARM_START_RECIPE, {"init": "baseline", "gate_loss": "balanced"}))),
)
DualOutput.model_kinds_reason = (
    "its two-headed network has no label input")
