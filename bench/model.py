"""The common model interface every technique wraps: a denoiser network, what it predicts, its noise schedule
(a diffusers scheduler config) and the image shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UserError

# What diffusers schedulers consume. A technique may define its own output layout (e.g. the dual-output network's
# stacked heads) and convert it before any scheduler sees it.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# DDPM (Ho et al. 2020): T = 1000, linear β from 1e-4 to 0.02.
DDPM_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
    "timestep_spacing": "leading",
}
# The cosine schedule (Nichol & Dhariwal 2021; diffusers' "squaredcos_cap_v2"), on the same T = 1000: the schedule the
# distillation papers' teachers use. Its top timestep is almost pure noise (√ᾱ_999 ≈ 1e-4 against 0.0064 for the
# linear one), so it pairs with a v- or x-predicting model, not an ε one.
COSINE_SCHEDULE: dict[str, Any] = {**DDPM_SCHEDULE, "beta_schedule": "squaredcos_cap_v2"}
SCHEDULES: dict[str, dict[str, Any]] = {"linear": DDPM_SCHEDULE, "cosine": COSINE_SCHEDULE}


class Denoiser(nn.Module):
    """``denoiser(x_t, t)`` → the network's prediction of ``prediction_type`` at timestep(s) ``t``.

    Forward hooks on this module count denoiser calls (NFE) and capture inputs for FLOP counting, so a technique
    routes every network evaluation it makes at sampling time through a ``Denoiser``.
    """

    def __init__(self, net: nn.Module, prediction_type: str, scheduler_config: dict[str, Any],
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.net = net
        self.prediction_type = prediction_type
        self.scheduler_config = {**scheduler_config, "prediction_type": prediction_type}
        self.image_shape = tuple(image_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.net(x, t)
        return out.sample if hasattr(out, "sample") else out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def require_scheduler_output(self, who: str) -> None:
        """Raise a ``UserError`` when a diffusers scheduler cannot consume this network's output."""
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"{who} needs a model predicting one of {', '.join(PREDICTION_TYPES)}; this one "
                            f"predicts {self.prediction_type!r}")


def build_unet(config: dict[str, Any]) -> nn.Module:
    """The baseline network: a diffusers ``UNet2DModel`` from its config kwargs."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def save_denoiser(denoiser: Denoiser, directory: Path) -> Path:
    """Save as a diffusers pipeline folder (``unet/`` + ``scheduler/``). A ``UNet2DModel`` gets a ``model_index.json``
    too, so ``DDPMPipeline.from_pretrained`` loads it; a technique's own ``ModelMixin`` network gets the same layout
    without one (no diffusers pipeline knows its class), and ``load_denoiser(..., net_class=)`` reads it back."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    scheduler = DDPMScheduler.from_config(denoiser.scheduler_config)
    if isinstance(denoiser.net, UNet2DModel):
        DDPMPipeline(unet=denoiser.net, scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    else:
        denoiser.net.save_pretrained(directory / "unet", safe_serialization=True)
        scheduler.save_pretrained(directory / "scheduler")
    return directory / "unet" / "diffusion_pytorch_model.safetensors"


def unet_folder(folder: Path) -> Path:
    """The network's folder inside a diffusers pipeline folder (``unet/``), or the folder itself for a bare model."""
    return folder / "unet" if (folder / "unet" / "config.json").exists() else folder


def scheduler_file(folder: Path) -> Path | None:
    """The scheduler config of a pipeline folder (``scheduler/``) or beside a bare model, if any."""
    return next((p for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json")
                 if p.is_file()), None)


def load_denoiser(source: str | Path, device: str = "cpu", net_class: type | None = None) -> Denoiser:
    """A ``Denoiser`` from a local diffusers folder (pipeline layout or a bare UNet folder) or a hub id; the network
    is a ``UNet2DModel`` unless ``net_class`` names another diffusers ``ModelMixin`` with the same config keys
    (``in_channels``, ``sample_size``)."""
    from diffusers import DDPMScheduler, UNet2DModel

    net_class = net_class or UNet2DModel

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            unet_dir, sched_file = unet_folder(path), scheduler_file(path)
            scheduler_config = dict(DDPM_SCHEDULE) if sched_file is None else json.loads(sched_file.read_text())
            net = net_class.from_pretrained(unet_dir, low_cpu_mem_usage=False)
        else:  # a hub id such as google/ddpm-cifar10-32: needs a network or a populated HF cache
            net = net_class.from_pretrained(str(source), low_cpu_mem_usage=False)
            scheduler_config = dict(DDPMScheduler.load_config(str(source)))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a diffusers {net_class.__name__} from {source!r}: "
                        f"{str(exc).splitlines()[0]}") from exc
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    prediction = scheduler_config.get("prediction_type", "epsilon")
    return Denoiser(net, prediction, scheduler_config, shape).to(device).eval()
