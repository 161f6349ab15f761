"""``python -m fomo_core``: the ``fomo-core`` command line, which lives in the simulator wing
(``fomo_core.simulate.cli``): the one place the core names the wing."""

import sys

from fomo_core.simulate.cli import main

if __name__ == "__main__":
    sys.exit(main())
