"""``python -m clipcap.cli``: the ``clipcap`` command (e.g. under torchrun)."""

import sys

from clipcap.cli import main

sys.exit(main())
