"""``python -m refquant`` is the ``refquant`` command."""
import sys

from refquant.cli import main

sys.exit(main())
