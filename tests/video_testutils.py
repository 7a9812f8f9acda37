"""Helpers for the video-extraction tests: synthetic videos, a tiny CLIP folder, the real demo video,
and an independent reference implementation of upstream's feature recipe (decode with PyAV, sample,
nearest resize through float, CLIPImageProcessor, full CLIPVisionModel ``hidden_states[-2][:, 1:]``,
numpy pooling), written from the upstream description and sharing no code with ``llavidal.features``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np


def write_synthetic_video(path: Path, num_frames: int, width: int = 160, height: int = 120, fps: int = 15,
                          codec: str = "libx264", seed: int = 0) -> Path:
    """A small video of a coloured square moving over a gradient (different per seed)."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = rng.integers(40, 255, size=3, dtype=np.uint8)
    background = np.zeros((height, width, 3), dtype=np.uint8)
    background[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
    background[..., 1] = np.linspace(0, 120, height, dtype=np.uint8)[:, None]
    background[..., 2] = rng.integers(0, 80)
    side = max(8, min(width, height) // 4)
    velocity = rng.integers(1, 5, size=2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for index in range(num_frames):
            image = background.copy()
            x = int(velocity[0] * index) % (width - side)
            y = int(velocity[1] * index) % (height - side)
            image[y : y + side, x : x + side] = colour
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_tiny_clip(folder: Path, with_processor: bool = True) -> Path:
    """A randomly initialised 2-layer CLIPVisionModel (224 px, 14 px patches, 32-d) saved as a folder."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPVisionModel(config)
    model.save_pretrained(str(folder))
    if with_processor:
        # Not CLIP's statistics, so a test can tell that the folder's preprocessor is the one used.
        CLIPImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(str(folder))
    return folder


def sports2d_demo_video() -> Path | None:
    """The real VP9 video of a person walking that PyPI ``sports2d`` ships (None when not installed)."""
    spec = importlib.util.find_spec("Sports2D")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in sorted(Path(root).rglob("*.mp4")):
            if candidate.name.lower().startswith("demo"):
                return candidate
    return None


def copy_file(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


# ---- the reference: upstream's algorithm, step by step --------------------------------------------

def upstream_seq_frames(total_num_frames: int, desired_num_frames: int) -> list[int]:
    segment = float(total_num_frames - 1) / desired_num_frames
    return [(int(np.round(segment * i)) + int(np.round(segment * (i + 1)))) // 2 for i in range(desired_num_frames)]


def upstream_pool(features: np.ndarray, num_temporal_tokens: int = 100) -> np.ndarray:
    t, _, _ = features.shape
    temporal = np.mean(features, axis=1)
    if num_temporal_tokens - t > 0:
        temporal = np.pad(temporal, ((0, num_temporal_tokens - t), (0, 0)), mode="constant")
    spatial = np.mean(features, axis=0)
    return np.concatenate([temporal, spatial], axis=0)


def reference_features(video: Path, clip_folder: Path, num_frames: int = 100) -> np.ndarray:
    """Upstream's recipe, computed independently, in float32: ``(num_frames + P, D)``."""
    import av
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    with av.open(str(video)) as container:  # pass 1: how many frames the video has (by decoding)
        total = sum(1 for _ in container.decode(video=0))
    indices = upstream_seq_frames(total, min(total, num_frames))
    wanted = set(indices)
    kept: dict[int, np.ndarray] = {}
    with av.open(str(video)) as container:  # pass 2: the sampled frames
        for number, frame in enumerate(container.decode(video=0)):
            if number in wanted:
                kept[number] = frame.to_ndarray(format="rgb24")
    frames = np.stack([kept[i] for i in indices])  # (T, H, W, 3)
    if frames.shape[1] != 224 or frames.shape[2] != 224:
        tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        tensor = torch.nn.functional.interpolate(tensor, size=(224, 224))
        frames = tensor.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    processor = CLIPImageProcessor.from_pretrained(str(clip_folder))
    pixels = processor.preprocess([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    model = CLIPVisionModel.from_pretrained(str(clip_folder)).float().eval()
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, P, D)
    return upstream_pool(hidden.numpy().astype(np.float32), num_frames)
