"""A clip without objects (an (0, 8, D) object file, as extraction writes for such clips) trains as a
sample without the object modality: no empty span in the text, and the model accepts the batch."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from tiny_adl_data import OBJECT_DIM, SIZES, make_records, write_features  # noqa: E402

from llavidal.data.collator import PaddedCollator  # noqa: E402
from llavidal.data.dataset import LazySupervisedDataset  # noqa: E402
from llavidal.data.feature_store import save_features  # noqa: E402
from llavidal.model.builder import build_model  # noqa: E402
from llavidal.model.modality import ModalityRegistry  # noqa: E402
from llavidal.testing import tiny_causal_lm_dir  # noqa: E402

torch.set_num_threads(1)


def test_clip_without_objects_trains(tmp_path):
    records = make_records(count=3, multi_turn_every=0)
    folders = write_features(tmp_path / "features", records, fmt="safetensors")
    empty_id = records[0]["id"]
    for path in Path(folders["object"]).glob(f"{empty_id}_object.*"):
        path.unlink()
    save_features(Path(folders["object"]) / f"{empty_id}_object.safetensors", np.zeros((0, 8, OBJECT_DIM), np.float16))

    registry = ModalityRegistry.default(
        video_dim=SIZES["video_feature_dim"], video_tokens=SIZES["video_tokens"],
        pose_dim=SIZES["pose_feature_dim"], pose_tokens=SIZES["pose_tokens"], object_dim=OBJECT_DIM,
    )
    model, tokenizer = build_model(str(tiny_causal_lm_dir(tmp_path / "llm")), registry, template="chat")
    dataset = LazySupervisedDataset(records, tokenizer, registry, {k: str(v) for k, v in folders.items()}, template="chat")
    items = [dataset[i] for i in range(len(records))]
    object_start = tokenizer.convert_tokens_to_ids("<object_start>")
    empty_item = next(item for item in items if item["id"] == empty_id)
    assert object_start not in empty_item["input_ids"].tolist()
    assert any(object_start in item["input_ids"].tolist() for item in items if item["id"] != empty_id)

    batch = PaddedCollator(tokenizer.pad_token_id)(items)
    output = model(**batch)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.projectors["object"].weight.grad is not None
