r"""Video-ChatGPT's inference at its path, with its flags: ``llavidal eval infer`` underneath.

Upstream ran (``run_inference_activitynet_qa.py``, ``run_inference_benchmark_{general,consistency}.py``
and the Breakfast fork's ``run_inference.py``):

    python video_chatgpt/eval/run_inference_activitynet_qa.py --video_dir VIDEOS \
        --gt_file_question test_q.json --gt_file_answers test_a.json \
        --output_dir OUT --output_name activitynet_qa --model-name LLaVA-7B-Lightening-v1-1 \
        --projection_path video_chatgpt-7B.bin [--conv-mode video-chatgpt_v1]
    python video_chatgpt/eval/run_inference_benchmark_general.py --video_dir VIDEOS --gt_file generic_qa.json \
        --output_dir OUT --output_name generic --model-name ... --projection_path ...

decoding each video and extracting its CLIP features on the fly, sampling at temperature 0.2, and writing
``OUT/NAME.json``: a JSON list of ``{id, question, answer, pred}`` (question + answer files) or the
ground-truth record + ``pred`` (``pred1``/``pred2`` for the consistency file's ``Q1``/``Q2``).

Ours, the same command (``python video_chatgpt/eval/run_inference.py ...``; the three upstream names run
this file):

* ``--video_dir`` is a features folder (``{video_name}.pkl``/``.safetensors``...): features are extracted
  once, beforehand, with ``python scripts/save_spatio_temporal_clip_features.py --video_dir_path VIDEOS
  --clip_feat_path FEATURES``; a folder of videos is refused with that command in the message.
* ``--projection_path`` is the weights (``--weights``: a training output folder or upstream weights),
  ``--model-name`` the base LLM, ``--conv-mode`` the prompt template (``video-chatgpt_v1`` = ``llavidal_v1``;
  default: the template the weights were trained with).
* ``--gt_file_question`` + ``--gt_file_answers`` score as zero-shot QA (``zeroshot_qa``), ``--gt_file`` as the
  Video-ChatGPT benchmark (``videochatgpt``); ``--benchmark`` overrides.
* Writes ``OUT/NAME.jsonl`` (our rows: resumable, with status and errors) and ``OUT/NAME.json`` in
  Video-ChatGPT's format, which ``evaluation/quantitative_evaluation/*.py`` read as upstream's judges did.
* Greedy decoding, up to 1024 new tokens; ``--temperature 0.2`` samples as upstream did. Every other flag
  of ``llavidal eval infer`` (``--pose_folder``, ``--batch_size``, ``--device``, ``--limit``...) is accepted;
  torchrun shards the records. Exit 1 when any record failed (its reason is in its row), 2 on a usage error.
"""

import sys

from llavidal.cli import run


def _flag_name(token: str) -> str:
    return token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else ""


def main(argv: list[str] | None = None) -> int:
    """Video-ChatGPT's flags are aliases of ``llavidal eval infer``'s fields (``--video_dir``,
    ``--gt_file_question``, ``--gt_file_answers``, ``--gt_file``, ``--model-name``, ``--projection_path``,
    ``--conv-mode``); this adds its defaults (the benchmark its files imply, 1024 new tokens, its file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = {_flag_name(token) for token in argv}
    defaults = ["--max_new_tokens", "1024", "--videochatgpt_json"]  # later flags (the user's) win
    if "benchmark" not in given:
        pair = given & {"gt_file_answers", "answers"}
        defaults += ["--benchmark", "zeroshot_qa" if pair else "videochatgpt"]
    return run(("eval", "infer"), [*defaults, *argv])


if __name__ == "__main__":
    sys.exit(main())
