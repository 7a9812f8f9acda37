r"""Video-ChatGPT's ``run_inference_benchmark_consistency.py`` at its path: runs ``video_chatgpt/eval/run_inference.py``
(same flags; its docstring says how upstream ran it and what ours does)."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("run_inference.py")), run_name="__main__")
