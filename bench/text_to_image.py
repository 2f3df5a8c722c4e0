"""Text-to-image models: a diffusers Stable Diffusion-style folder (``unet/`` a ``UNet2DConditionModel``, ``vae/``,
``text_encoder/`` a CLIP text model, ``tokenizer/``, ``scheduler/``) as the sweep's base model, prompts from a file,
the text encoder as a network of its own (its calls and FLOPs kept apart from the denoiser's), CLIP score where CLIP
weights are present, and the tiny random-weight pipeline the tests and the offline study build from configs (as
diffusers' own pipeline tests do).

Image i gets prompt ``prompts[seed_i mod P]``, the rule class labels follow, so two cells' images stay paired seed by
seed. Guidance's unconditional branch is the empty prompt, as in diffusers' ``StableDiffusionPipeline``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UserError

PROMPT_RULE = "prompt = prompts[seed mod P]; unconditional branch: the empty prompt"
DEFAULT_PROMPTS = Path(__file__).parent / "data_files" / "prompts.txt"
# A folder holding this file has random weights: its images carry no quality, so a cell stores none (the file says
# why); its costs are real.
RANDOM_WEIGHTS_MARKER = "bench_random_weights.txt"
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LIMIT_PROMPTS = 100_000


def is_text_to_image(folder: Path) -> bool:
    """A diffusers folder whose network is text-conditioned (a ``UNet2DConditionModel`` beside a text encoder)."""
    config = folder / "unet" / "config.json"
    return (folder / "text_encoder" / "config.json").is_file() and config.is_file() and \
        json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"


def random_weights_reason(folder: Path) -> str | None:
    marker = folder / RANDOM_WEIGHTS_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def image_shape(folder: Path) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(image shape, latent shape) of a text-to-image folder: the U-Net's latents, the VAE's images (one halving per
    VAE level after the first)."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return (int(vae["out_channels"]), side, side), (int(unet["in_channels"]), int(unet["sample_size"]),
                                                    int(unet["sample_size"]))


# -- prompts -------------------------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"model.prompts {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"model.prompts {str(path)!r} holds no prompt (one per line)")
    if len(prompts) > LIMIT_PROMPTS:
        raise UserError(f"model.prompts {str(path)!r} holds {len(prompts)} prompts, beyond {LIMIT_PROMPTS}")
    return prompts


def prompts_sha256(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def prompts_for_seeds(seeds: Sequence[int], prompts: Sequence[str]) -> list[str]:
    return [prompts[int(s) % len(prompts)] for s in seeds]


# -- the text encoder as a network ---------------------------------------------------------------------------------
class TextEncoder(nn.Module):
    """A CLIP text model, token ids → the hidden states the U-Net cross-attends to (``last_hidden_state``, as
    Stable Diffusion uses them). Tokenizing (``tokens``) happens outside the network: it is not a tensor op."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def tokens(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids.to(device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids).last_hidden_state


def load_text_encoder(folder: Path) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    return TextEncoder(CLIPTextModel.from_pretrained(folder / "text_encoder"),
                       CLIPTokenizer.from_pretrained(folder / "tokenizer")).eval()


def save_text_encoder(encoder: TextEncoder, folder: Path) -> None:
    encoder.model.save_pretrained(folder / "text_encoder", safe_serialization=True)
    encoder.tokenizer.save_pretrained(folder / "tokenizer")


# -- the tiny random-weight pipeline -------------------------------------------------------------------------------
def _byte_tokenizer() -> Any:
    """A CLIP tokenizer built without a download: the GPT-2 byte table as its vocabulary (every character, alone and
    word-final), no merges. In transformers 5 ``CLIPTokenizer(vocab_file=...)`` silently ignores its files (every
    prompt becomes ``<|endoftext|>``), so the vocabulary is given as a dict."""
    from transformers import CLIPTokenizer

    # GPT-2's byte → printable character table (Radford et al. 2019), which byte-level BPE tokenizers share
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_pipeline(folder: Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny random-weight Stable Diffusion folder (latents 4×8×8, images 3×16×16 by default), built from
    configs with ``seed``: every cost path of a text-to-image cell runs on it offline in seconds; its images are
    noise, so it carries ``RANDOM_WEIGHTS_MARKER``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=2 * sample_size)
    tokenizer = _byte_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / RANDOM_WEIGHTS_MARKER).write_text(
        f"random weights (bench.text_to_image.build_tiny_pipeline, seed {seed}): built to measure costs; its images "
        "are noise, so no quality is computed\n")
    return folder


# -- CLIP score ----------------------------------------------------------------------------------------------------
@functools.cache  # once per process: offline, the hub client retries for ~20 s before it gives up
def _clip(source: str) -> tuple[nn.Module, Any] | str:
    """The CLIP model and tokenizer of ``source`` (the local cache first), or why they cannot be had."""
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    errors = []
    for local_only in (True, False):
        try:
            return (CLIPModel.from_pretrained(source, local_files_only=local_only).eval(),
                    CLIPTokenizer.from_pretrained(source, local_files_only=local_only))
        except Exception as exc:  # offline: OSError "couldn't connect"; a folder without weights: OSError too
            errors.append((str(exc).strip().splitlines() or [type(exc).__name__])[0])
        if Path(source).expanduser().is_dir():
            break
    return f"CLIP weights {source!r} unavailable: {errors[-1]}"


def clip_score(images: torch.Tensor, prompts: Sequence[str], source: str) -> dict[str, Any]:
    """Mean CLIP score (Hessel et al. 2021, as torchmetrics: 100 · max(cos(image, text), 0)) of uint8 images against
    their prompts, with the CLIP model from ``source`` (a local folder or hub id); where its weights cannot be had
    (offline, no cache), the reason instead of a number."""
    loaded = _clip(source)
    if isinstance(loaded, str):
        return {"clip_score": None, "clip_score_skipped": loaded}
    model, tokenizer = loaded
    size = model.config.vision_config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # CLIP's own normalisation
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), 100):
            x = images[start:start + 100].float() / 255.0
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
            ids = tokenizer(list(prompts[start:start + 100]), padding=True, truncation=True, return_tensors="pt")
            image = model.get_image_features(pixel_values=(x - mean) / std)
            text = model.get_text_features(**ids)
            # transformers 5 returns the projected embedding inside an output object
            image = getattr(image, "pooler_output", image)
            text = getattr(text, "pooler_output", text)
            cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
            scores.append(100 * cos.clamp(min=0))
    values = torch.cat(scores)
    return {"clip_score": float(values.mean()), "clip_score_std": float(values.std()) if len(values) > 1 else 0.0,
            "clip_model": source, "clip_score_skipped": None}
