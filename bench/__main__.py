"""``python -m bench``: run the benchmarks and write ``bench/RESULTS.md``."""

from __future__ import annotations

import sys

from bench._cli import main

if __name__ == "__main__":
    sys.exit(main())
