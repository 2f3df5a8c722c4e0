"""The common model interface every technique wraps: a denoiser network, what it predicts, its noise schedule
(a diffusers scheduler config), the image shape and, for a class-conditional model, its classes (with a null class
for classifier-free guidance; ``bench.conditioning`` supplies each image's label and the guider)."""

from __future__ import annotations

import copy
import functools
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
# The networks a zoo recipe builds: diffusers' U-Net, and its class-conditional transformer (DiT, Peebles & Xie 2023).
ARCHS = ("unet", "dit")
# What a model is conditioned on; a technique declares the kinds it supports (``Technique.model_kinds``).
MODEL_KINDS = ("unconditional", "class", "text")


@functools.cache
def _guidance_embedding_class() -> type:  # diffusers is imported lazily, as everywhere here
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.modeling_utils import ModelMixin

    class GuidanceEmbedding(ModelMixin, ConfigMixin):
        """The guidance scale w as a network input (Meng et al. 2023, guidance distillation): sinusoidal features of
        w through a two-layer MLP, added to the network's time embedding. The last layer starts at zero, so a student
        built from its teacher's weights starts as the teacher's conditional (w = 1) prediction."""

        @register_to_config
        def __init__(self, dim: int, channels: int = 64, w_scale: float = 100.0) -> None:
            super().__init__()
            # w spans a few units; the sinusoids are made for timesteps in the hundreds (hence ``w_scale``)
            self.features = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.mlp = TimestepEmbedding(channels, dim)
            nn.init.zeros_(self.mlp.linear_2.weight)
            nn.init.zeros_(self.mlp.linear_2.bias)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.features(w.float() * self.config.w_scale))

    return GuidanceEmbedding


def guidance_embedding_targets(net: nn.Module) -> list[nn.Module]:
    """The modules whose output is the network's time(+label) embedding, where a guidance embedding is added: the
    U-Net's ``time_embedding``; every DiT block's ``norm1.emb`` (the DiT's output layer reuses block 0's)."""
    if hasattr(net, "transformer_blocks"):
        return [block.norm1.emb for block in net.transformer_blocks]
    if hasattr(net, "time_embedding"):
        return [net.time_embedding]
    raise UserError(f"a guidance embedding needs a U-Net or DiT time embedding; {type(net).__name__} has none")


def _embedding_width(module: nn.Module) -> int:
    linear = getattr(module, "linear_2", None) or module.timestep_embedder.linear_2
    return int(linear.out_features)


def new_guidance_embedding(net: nn.Module) -> nn.Module:
    """A zero-initialised ``GuidanceEmbedding`` sized for ``net``'s time embedding."""
    return _guidance_embedding_class()(_embedding_width(guidance_embedding_targets(net)[0]))


class Evaluation(nn.Module):
    """One evaluation of a conditional network, ``(x_t, t, condition[, w]) → prediction``: what NFE counts and FLOPs
    measure for a conditional ``Denoiser``, whose single call may evaluate its network twice (classifier-free
    guidance), or once with the guidance scale ``w`` as an input (a guidance-distilled network). The condition is
    a batch of class labels (integers) or of text-encoder hidden states (floats, which a ``UNet2DConditionModel``
    cross-attends to).

    It owns the network: a conditional ``Denoiser`` reaches it as ``denoiser.net`` through this module."""

    def __init__(self, net: nn.Module, guidance_embedding: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.guidance_embedding = guidance_embedding

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                w: torch.Tensor | None = None) -> torch.Tensor:
        if labels.is_floating_point():  # a text-conditioned network: the prompt's hidden states
            out = self.net(x, t, encoder_hidden_states=labels)
        elif self.guidance_embedding is None:
            out = self.net(x, t, labels)
        else:
            if w is None:
                raise RuntimeError("a guidance-distilled network was evaluated without a guidance scale")
            added = self.guidance_embedding(w)
            # hooks only for this call: a copied network (a student's) carries none of its teacher's
            handles = [target.register_forward_hook(lambda module, inputs, output: output + added.to(output.dtype))
                       for target in guidance_embedding_targets(self.net)]
            try:
                out = self.net(x, t, labels)
            finally:
                for handle in handles:
                    handle.remove()
        return out.sample if hasattr(out, "sample") else out


class Decoder(nn.Module):
    """A latent model's VAE decode, latents (scaled as the denoiser sees them) → images in [-1, 1]: a network of its
    own, whose calls and FLOPs a record keeps apart from the denoiser's."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample.clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the latents the denoiser is trained on (the posterior mean, scaled)."""
        return self.vae.encode(images).latent_dist.mean * self.scaling_factor


class Denoiser(nn.Module):
    """``denoiser(x_t, t)`` → the network's prediction of ``prediction_type`` at timestep(s) ``t``.

    Forward hooks on ``counted`` (this module, or a conditional model's ``Evaluation``) count network evaluations
    (NFE) and capture inputs for FLOP counting, so a technique routes every network evaluation it makes at sampling
    time through a ``Denoiser``. A conditional one (``num_classes``) takes its images' labels from
    ``class_labels`` or, when not given, from the enclosing ``bench.conditioning.conditioned`` block, which may also
    guide it: each guided call then evaluates the network on the labels and on the null class (``num_classes``).
    A text-conditioned one (``text_encoder``) is conditioned alike on its images' prompts, which the harness encodes
    with that network (counted apart: its calls are not NFE), the empty prompt's for the unconditional branch.
    """

    def __init__(self, net: nn.Module, prediction_type: str, scheduler_config: dict[str, Any],
                 image_shape: tuple[int, int, int], num_classes: int | None = None,
                 decoder: Decoder | None = None, guidance_embedding: nn.Module | None = None,
                 text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder  # a latent model's VAE decode; image_shape is then the latent shape
        self.text_encoder = text_encoder  # a text-to-image model's prompt encoder (bench.text_to_image.TextEncoder)
        if guidance_embedding is not None and not num_classes:
            raise ValueError("a guidance embedding needs a class-conditional network")
        if num_classes or text_encoder is not None:
            self.evaluation = Evaluation(net, guidance_embedding)
        else:
            self.add_module("net", net)
            self.evaluation = None
        self.prediction_type = prediction_type
        self.scheduler_config = {**scheduler_config, "prediction_type": prediction_type}
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes

    @property
    def net(self) -> nn.Module:
        return self.evaluation.net if self.evaluation is not None else self._modules["net"]

    @property
    def kind(self) -> str:
        return "text" if self.text_encoder is not None else "class" if self.num_classes else "unconditional"

    @property
    def counted(self) -> nn.Module:
        """The module whose calls are network evaluations (NFE)."""
        return self.evaluation if self.evaluation is not None else self

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    @property
    def embeds_guidance(self) -> bool:
        """True for a guidance-distilled network: the guidance scale is its input, one evaluation per step."""
        return self.evaluation is not None and self.evaluation.guidance_embedding is not None

    def derived(self, prediction_type: str | None = None, embed_guidance: bool = False) -> Denoiser:
        """A trainable copy (a student starting from this model's weights): same classes, schedule and decoder,
        another output parameterisation if asked, and a guidance embedding (a new zero one where this has none)."""
        embedding = None
        if embed_guidance or self.embeds_guidance:
            embedding = (copy.deepcopy(self.evaluation.guidance_embedding) if self.embeds_guidance
                         else new_guidance_embedding(self.net))
        student = Denoiser(copy.deepcopy(self.net), prediction_type or self.prediction_type, self.scheduler_config,
                           self.image_shape, self.num_classes, self.decoder, embedding, self.text_encoder)
        trained = student.evaluation if student.evaluation is not None else student.net
        trained.requires_grad_(True)  # the decoder stays frozen
        return student

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.evaluation is None:
            out = self.net(x, t)
            return out.sample if hasattr(out, "sample") else out
        from bench import conditioning

        return conditioning.guided(self, x, t, class_labels)

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


def build_network(arch: str, config: dict[str, Any], num_classes: int | None = None) -> nn.Module:
    """A zoo network: the U-Net (class-conditional through a label embedding of ``num_classes`` + 1 rows, the last
    the null class) or a class-conditional DiT (diffusers' ``DiTTransformer2DModel``, whose label table has the null
    class already). The DiT's label embedders would each drop labels on their own in ``train()`` mode (52 % of images
    lose their label in some block): their dropout is switched off, and training drops labels itself, once per
    image."""
    if arch == "unet":
        return build_unet({**config, **({"num_class_embeds": num_classes + 1} if num_classes else {})})
    if arch == "dit":
        from diffusers import DiTTransformer2DModel

        if not num_classes:
            raise UserError("the DiT is class-conditional: set model.conditioning = \"class\"")
        return without_label_dropout(DiTTransformer2DModel(**config, num_embeds_ada_norm=num_classes))
    raise UserError(f"model.arch {arch!r} is not one of {', '.join(ARCHS)}")


def without_label_dropout(net: nn.Module) -> nn.Module:
    """Switch off the label dropout of every diffusers ``LabelEmbedding`` in ``net`` (in place): their tables keep
    the null class, and ``train()`` no longer drops labels block by block (a DiT built or loaded alike)."""
    from diffusers.models.embeddings import LabelEmbedding

    for module in net.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return net


def network_classes(net: nn.Module) -> int | None:
    """The classes a diffusers network is conditioned on (without the null class), or None."""
    config = net.config
    if getattr(config, "num_embeds_ada_norm", None) and type(net).__name__ == "DiTTransformer2DModel":
        return int(config.num_embeds_ada_norm)
    if getattr(config, "num_class_embeds", None):
        return int(config.num_class_embeds) - 1
    return None


def save_denoiser(denoiser: Denoiser, directory: Path) -> Path:
    """Save as a diffusers pipeline folder (``unet/`` + ``scheduler/``). A ``UNet2DModel`` gets a ``model_index.json``
    too, so ``DDPMPipeline.from_pretrained`` loads it; a technique's own ``ModelMixin`` network gets the same layout
    without one (no diffusers pipeline knows its class), and ``load_denoiser(..., net_class=)`` reads it back."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    scheduler = DDPMScheduler.from_config(denoiser.scheduler_config)
    if denoiser.text_encoder is not None:  # diffusers' StableDiffusionPipeline layout, loadable by that pipeline
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline(vae=denoiser.decoder.vae, text_encoder=denoiser.text_encoder.model,
                                tokenizer=denoiser.text_encoder.tokenizer, unet=denoiser.net, scheduler=scheduler,
                                safety_checker=None, feature_extractor=None, requires_safety_checker=False
                                ).save_pretrained(directory, safe_serialization=True)
        return directory / "unet" / "diffusion_pytorch_model.safetensors"
    if denoiser.embeds_guidance:  # a guidance-distilled network's w input, beside the network it feeds
        denoiser.evaluation.guidance_embedding.save_pretrained(directory / "guidance_embedding",
                                                               safe_serialization=True)
    if denoiser.decoder is not None:  # a latent model: diffusers' latent pipeline layout (unet/ vae/ scheduler/)
        denoiser.net.save_pretrained(directory / "unet", safe_serialization=True)
        denoiser.decoder.vae.save_pretrained(directory / "vae", safe_serialization=True)
        scheduler.save_pretrained(directory / "scheduler")
        return directory / "unet" / "diffusion_pytorch_model.safetensors"
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


def _saved_class(folder: Path) -> type | None:
    """The diffusers class a saved network folder names, among those the zoo builds."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

    config = folder / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    return {"DiTTransformer2DModel": DiTTransformer2DModel, "UNet2DModel": UNet2DModel,
            "UNet2DConditionModel": UNet2DConditionModel}.get(name)


def load_denoiser(source: str | Path, device: str = "cpu", net_class: type | None = None) -> Denoiser:
    """A ``Denoiser`` from a local diffusers folder (pipeline layout or a bare UNet folder) or a hub id; the network
    is the class its config names (a ``UNet2DModel`` or a ``DiTTransformer2DModel``), or ``net_class``, another
    diffusers ``ModelMixin`` with the same config keys (``in_channels``, ``sample_size``)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(source).expanduser()
    if net_class is None:
        net_class = (_saved_class(unet_folder(path)) if path.is_dir() else None) or UNet2DModel
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
    without_label_dropout(net)
    decoder = None
    if path.is_dir() and (path / "vae" / "config.json").is_file():
        from diffusers import AutoencoderKL

        decoder = Decoder(AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False))
    embedding = None
    if path.is_dir() and (path / "guidance_embedding" / "config.json").is_file():
        embedding = _guidance_embedding_class().from_pretrained(path / "guidance_embedding", low_cpu_mem_usage=False)
    text_encoder = None
    if path.is_dir() and (path / "text_encoder" / "config.json").is_file():
        from bench.text_to_image import load_text_encoder

        text_encoder = load_text_encoder(path)
    return Denoiser(net, prediction, scheduler_config, shape, network_classes(net), decoder,
                    embedding, text_encoder).to(device).eval()
