"""Entry point of `python -m seqlstm`."""

import sys

from seqlstm.cli import main

sys.exit(main())
