"""Convert Video-ChatGPT QA JSON into training records (upstream script path; see llavidal.data.convert).

Run as::

    python scripts/convert_instruction_json_to_training_format.py --input_json_file qa.json \\
        --output_json_file train.json [--clip_feature_path feats/video] [--with_pose_object]
"""

import sys

from llavidal.data.convert import main

if __name__ == "__main__":
    sys.exit(main())
