"""``python -m certkit``: the same as the ``certkit`` command."""
import sys

from .cli import main

sys.exit(main())
