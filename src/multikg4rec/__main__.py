"""``python -m multikg4rec``: the command line (what torchrun's ``-m multikg4rec`` runs)."""
import sys

from .cli import main

sys.exit(main())
