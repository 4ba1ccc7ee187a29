"""`python -m livevlm ...`: the `livevlm` command (as `python -m livevlm.cli`), for an environment whose scripts
folder is not on PATH."""

import sys

from .cli import main

sys.exit(main())
