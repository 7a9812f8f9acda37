import sys

from llavidal.cli import main

sys.exit(main())
