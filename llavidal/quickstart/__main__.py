"""``python -m llavidal.quickstart`` = ``llavidal quickstart``."""

import sys

from llavidal.quickstart.command import main

sys.exit(main())
