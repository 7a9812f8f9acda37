"""The LSTP-style temporal sampler: pseudo-label training on planted frames, straight-through gradients, motion."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from llavidal.features.motion import optical_flow_magnitude
from llavidal.model.hf.sampler import (
    TemporalSampler,
    pseudo_label_loss,
    relevance_targets,
)
from llavidal.utils.optional import MissingDependencyError

FRAMES, PATCHES, DIM, TEXT_DIM, K = 16, 4, 32, 32, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared, busy CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_clips(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames (B, T, P, D), question (B, Dt), planted indices (B, K) ascending): K frames per clip carry the
    question vector on top of noise; the others are noise."""
    question = torch.randn(batch, TEXT_DIM, generator=generator)
    frames = torch.randn(batch, FRAMES, PATCHES, DIM, generator=generator)
    planted = torch.rand(batch, FRAMES, generator=generator).argsort(dim=1)[:, :K].sort(dim=1).values
    rows = torch.arange(batch).unsqueeze(1)
    frames[rows, planted] += question[:, None, None, :]  # every patch of a planted frame aligns with the question
    return frames, question, planted


def test_pseudo_label_training_picks_planted_frames() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    # the base model: a projector into a 24-d "LLM embedding" space; the answer's tokens sit near proj(question)
    base_projector = torch.nn.Linear(DIM, 24, bias=False)
    sampler = TemporalSampler(DIM, TEXT_DIM, k=K, hidden=64, motion="diff")
    optimizer = torch.optim.Adam(sampler.parameters(), lr=3e-3)
    for _ in range(300):
        frames, question, planted = planted_clips(32, generator)
        with torch.no_grad():
            answer = base_projector(question).unsqueeze(1) + 0.1 * torch.randn(32, 3, 24, generator=generator)
        targets = relevance_targets(frames, answer, projector=base_projector)  # (B, T) cosine similarities
        scores = sampler.score(frames, question)
        loss = pseudo_label_loss(scores, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # the targets themselves rank the planted frames first
    assert torch.equal(targets.topk(K, dim=1).indices.sort(dim=1).values, planted)
    frames, question, planted = planted_clips(64, torch.Generator().manual_seed(123))  # held out
    with torch.no_grad():
        output = sampler(frames, question)
    assert torch.equal(output.indices, planted)
    assert output.selected.shape == (64, K, PATCHES, DIM)
    assert torch.equal(output.selected, frames[torch.arange(64).unsqueeze(1), planted])


def test_straight_through_gradients_and_time_order() -> None:
    torch.manual_seed(1)
    sampler = TemporalSampler(DIM, TEXT_DIM, k=K, hidden=16, motion="none")
    frames, question, _ = planted_clips(3, torch.Generator().manual_seed(1))
    frames.requires_grad_(True)
    output = sampler(frames, question, hard=True)
    indices = output.indices
    assert indices.shape == (3, K)
    assert bool((indices[:, 1:] > indices[:, :-1]).all())  # ascending time
    assert torch.equal(indices, output.scores.topk(K, dim=1).indices.sort(dim=1).values)
    assert torch.equal(output.selected.detach(), frames.detach()[torch.arange(3).unsqueeze(1), indices])  # exact
    weights = torch.randn(output.selected.shape, generator=torch.Generator().manual_seed(2))
    (output.selected * weights).sum().backward()
    for name in ("frame_proj.weight", "key.weight", "query.weight", "prior.weight"):
        grad = dict(sampler.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the soft forward mixes frames but keeps the same choice
    soft = sampler(frames, question, hard=False)
    assert torch.equal(soft.indices, indices)
    assert not torch.allclose(soft.selected, output.selected)
    # a masked frame is never chosen; a short clip keeps every frame
    top = int(output.scores[0].argmax())
    frame_mask = torch.ones(3, FRAMES, dtype=torch.bool)
    frame_mask[0, top] = False
    assert top not in sampler(frames, question, frame_mask=frame_mask).indices[0].tolist()
    short = sampler(frames[:, :2], question)
    assert short.indices.tolist() == [[0, 1]] * 3


def test_motion_diff_and_flow_change_scores() -> None:
    torch.manual_seed(2)
    frames = torch.randn(1, FRAMES, DIM)
    question = torch.randn(1, TEXT_DIM)
    moved = frames.clone()
    moved[0, 5] += 3.0  # frame 5 moves; frame 6's features are untouched
    with_diff = TemporalSampler(DIM, TEXT_DIM, k=K, hidden=16, motion="diff")
    torch.manual_seed(2)
    without = TemporalSampler(DIM, TEXT_DIM, k=K, hidden=16, motion="none")
    with torch.no_grad():
        assert torch.equal(without.score(frames, question)[0, 6], without.score(moved, question)[0, 6])
        change = (with_diff.score(frames, question)[0, 6] - with_diff.score(moved, question)[0, 6]).abs()
    assert change > 1e-3  # frame 6's motion (its change from frame 5) entered its score
    flow = TemporalSampler(DIM, TEXT_DIM, k=K, hidden=16, motion="flow")
    still, moving = torch.zeros(1, FRAMES), torch.zeros(1, FRAMES)
    moving[0, 6] = 8.0
    with torch.no_grad():
        assert (flow.score(frames, question, still)[0, 6] - flow.score(frames, question, moving)[0, 6]).abs() > 1e-3
    with pytest.raises(ValueError, match="motion='diff'"):
        flow(frames, question)
    with pytest.raises(ValueError, match="motion='flow'"):
        with_diff(frames, question, motion=still)


def test_pseudo_label_loss_masks_frames() -> None:
    scores = torch.tensor([[2.0, 0.0, -1.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    masked = pseudo_label_loss(scores, targets, mask=mask, temperature=0.01)
    # with frame 3 masked out the target is frame 0 alone: the loss is frame 0's negative log-softmax over 0..2
    assert torch.allclose(masked, -torch.log_softmax(scores[0, :3], dim=0)[0])
    assert pseudo_label_loss(scores, targets, temperature=0.01) < masked + 5.0
    with pytest.raises(ValueError, match="differ"):
        pseudo_label_loss(scores, targets[:, :3])


class FakeCv2(types.ModuleType):
    """Stands in for OpenCV: the "flow" between two gray frames is their mean intensity difference along x."""

    COLOR_RGB2GRAY = 7
    INTER_AREA = 3

    def __init__(self) -> None:
        super().__init__("cv2")
        self.resized_to: list[tuple[int, int]] = []

    def cvtColor(self, frame: np.ndarray, code: int) -> np.ndarray:
        assert code == self.COLOR_RGB2GRAY and frame.shape[-1] == 3
        return frame.mean(axis=-1).astype(np.uint8)

    def resize(self, frame: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
        self.resized_to.append(size)
        rows = np.linspace(0, frame.shape[0] - 1, size[1]).astype(int)
        cols = np.linspace(0, frame.shape[1] - 1, size[0]).astype(int)
        return frame[rows][:, cols]

    def calcOpticalFlowFarneback(self, previous, current, flow, *params):
        assert previous.shape == current.shape and len(params) == 7
        flow = np.zeros((*current.shape, 2), dtype=np.float32)
        flow[..., 0] = float(current.mean()) - float(previous.mean())
        return flow


def test_optical_flow_magnitude_reduces_flow_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCv2()
    monkeypatch.setitem(sys.modules, "cv2", fake)
    levels = [10, 10, 50, 60]
    frames = np.stack([np.full((240, 320, 3), level, dtype=np.uint8) for level in levels])
    magnitudes = optical_flow_magnitude(frames, max_side=160)
    assert set(fake.resized_to) == {(160, 120)}  # the longer side brought to 160, (width, height) for OpenCV
    # |mean difference| in resized pixels, scaled back by 320/160; frame 0 copies frame 1
    np.testing.assert_allclose(magnitudes, [0.0, 0.0, 80.0, 20.0])
    assert magnitudes.dtype == np.float32
    np.testing.assert_allclose(optical_flow_magnitude(frames[:1]), [0.0])


def test_optical_flow_without_opencv_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(MissingDependencyError, match="opencv-python-headless"):
        optical_flow_magnitude(np.zeros((2, 8, 8, 3), dtype=np.uint8))
