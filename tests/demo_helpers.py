"""Shared by the demo tests: tiny videos made with PyAV, a tiny model whose weights record their
features' recipe the way training does, and a small world-like folder of examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_video(path: Path, frames: int = 24, size: int = 64, fps: int = 8, shade: int = 30) -> Path:
    """An H.264 MP4 of a bright square moving over a changing background (``shade``: its base grey)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for index in range(frames):
            image = np.full((size, size, 3), shade, dtype=np.uint8)
            image[:, :, 2] = (index * 9) % 255
            x = (index * 3) % (size - 12)
            image[20:34, x : x + 12] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_skeleton_file(path: Path, frames: int) -> Path:
    """An NTU ``.skeleton`` file of one standing body, with colour pixels in the world's convention
    (the 64x64 video frame is the centred 1080x1080 square of a 1920x1080 image)."""
    from llavidal.features.pose.ntu import NUM_JOINTS, sequence_from_arrays, write_skeleton

    rng = np.random.default_rng(0)
    xyz = np.zeros((frames, 1, NUM_JOINTS, 3))
    xyz[..., 1] = np.linspace(-0.9, 0.7, NUM_JOINTS)  # a column of joints, feet to head
    xyz[..., 0] = rng.normal(0, 0.1, (frames, 1, NUM_JOINTS))
    xyz[..., 2] = 3.0
    video_xy = np.stack([np.full(NUM_JOINTS, 32.0), np.linspace(60, 4, NUM_JOINTS)], axis=-1)  # video pixels
    colour = np.stack([420 + video_xy[:, 0] * 1080 / 64, video_xy[:, 1] * 1080 / 64], axis=-1)
    colour = np.broadcast_to(colour, (frames, 1, NUM_JOINTS, 2))
    write_skeleton(path, sequence_from_arrays(xyz, color_xy=colour))
    return path


def make_tracks_file(path: Path, frames: int) -> Path:
    """Object tracks (docs/ARCHITECTURE.md format) of a mug and a book in a 64x64 video."""
    import json

    def track(object_id: int, name: str, box: list[float]) -> dict:
        return {"object_id": object_id, "class": name,
                "frames": [{"frame": t, "box": box, "position_3d": None, "score": 1.0} for t in range(0, frames, 3)]}

    tracks = {"video": path.stem + ".mp4", "fps": 8, "width": 64, "height": 64, "num_frames": frames,
              "source": "ground_truth",
              "objects": [track(0, "mug", [4, 4, 20, 20]), track(1, "book", [40, 40, 60, 58])]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tracks))
    return path


def make_world_examples(root: Path, frames: int = 24) -> Path:
    """``root/videos/clip_a.mp4`` with its skeleton and object tracks, and ``clip_b.mp4`` without."""
    make_video(root / "videos" / "clip_a.mp4", frames=frames)
    make_skeleton_file(root / "skeletons" / "clip_a.skeleton", frames)
    make_tracks_file(root / "tracks" / "clip_a.json", frames)
    make_video(root / "videos" / "clip_b.mp4", frames=frames, shade=60)  # other bytes: uploads match by content
    return root


def make_tiny_weights(
    root: Path, modalities: tuple[str, ...] = ("video", "pose", "object"), video_dim: int | None = None,
) -> tuple[Path, Path]:
    """(base LLM folder, weights folder) of a tiny model whose video projector fits the embedded vision
    encoder pooled to 8 temporal + 16 spatial tokens, with the feature folders training would record.

    ``video_dim`` different from the encoder's makes weights the demo must refuse.
    """
    from llavidal.features.encoders import load_vision_encoder
    from llavidal.features.objects.extract import ObjectExtractor
    from llavidal.features.pooling import PoolingConfig
    from llavidal.features.video import VideoExtractor
    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry
    from llavidal.testing import tiny_causal_lm_dir

    llm = tiny_causal_lm_dir(root / "llm")
    encoder = load_vision_encoder("embedded", device="cpu")
    pooling = PoolingConfig(temporal_tokens=8, spatial_grid=4)
    folders = {"video": root / "features" / "video", "object": root / "features" / "object"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    VideoExtractor.create(encoder, pooling, 8, "float16").manifest().save(folders["video"])
    ObjectExtractor.create(encoder, 8, 0.15, True, "float16").manifest().save(folders["object"])
    registry = ModalityRegistry.default(
        modalities, video_dim=video_dim or encoder.feature_dim, video_tokens=pooling.num_tokens(encoder.num_patches),
        object_dim=encoder.feature_dim,
    )
    model, _ = build_model(llm, registry, template="chat")
    # What training records: the feature folders it read (their manifest.json say how they were made).
    model.config.extra = {"feature_folders": {name: str(folders[name]) for name in modalities if name in folders}}
    weights = root / ("weights" if video_dim is None else f"weights_dim{video_dim}")
    model.save_pretrained(weights)
    return llm, weights
