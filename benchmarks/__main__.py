"""``python -m benchmarks``: the whole benchmark suite (see benchmarks/suite.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import main  # noqa: E402

raise SystemExit(main())
