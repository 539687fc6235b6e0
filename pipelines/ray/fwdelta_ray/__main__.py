"""`python -m fwdelta_ray PLAN OUTDIR --fwdelta PATH [--address ADDR]`."""

import sys

from .runner import main

sys.exit(main())
