r"""Video-ChatGPT's training script at its path: the same as ``llavidal/train/train_mem.py``.

Upstream ran (Video-ChatGPT's README; the Breakfast fork the same with its own data):

    torchrun --nproc_per_node=8 --master_port 29001 video_chatgpt/train/train_mem.py \
        --model_name_or_path LLaVA-7B-Lightening-v1-1 --version v1 \
        --data_path video_chatgpt_training.json --video_folder FEATURES \
        --tune_mm_mlp_adapter True --mm_use_vid_start_end --bf16 True --output_dir ./Video-ChatGPT_Finetuned \
        --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 \
        --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 3000 \
        --save_total_limit 3 --learning_rate 2e-5 --weight_decay 0. --warmup_ratio 0.03 \
        --lr_scheduler_type "cosine" --logging_steps 100 --tf32 True --model_max_length 2048 \
        --gradient_checkpointing True --lazy_preprocess True

which monkey-patched flash attention into LLaMA and trained the video projector (and the new token rows)
on the frozen LLM. Ours takes the same command: :func:`llavidal.train.train_mem.main` (flags: ``--help``)
with the fastest exact attention kernel (``attn_implementation``, no patching), on any feature folder the
feature store reads (upstream ``.pkl`` included), resuming from the newest ``checkpoint-*``; it writes
``trainable.safetensors`` + ``llavidal_config.json`` to ``--output_dir``.
"""

import sys

from llavidal.train.train_mem import main

if __name__ == "__main__":
    sys.exit(main())
