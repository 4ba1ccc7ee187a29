"""`python -m livevlm.cli ...`: the `livevlm` command."""

import sys

from . import main

sys.exit(main())
