"""Convert the Breakfast fork's Q/A text files and .labels segments into training records (the fork's script
path and flags; see llavidal.data.breakfast).

Run as::

    python scripts/convert_instruction_txt_to_training_format_breakfast.py --input_json_file QA_DIR \\
        --output_json_file train.json [--layout "{person}/{camera}/{video}.txt"] [--repeat segments=12,default=2]
"""

import sys

from llavidal.data.breakfast import main

if __name__ == "__main__":
    sys.exit(main())
