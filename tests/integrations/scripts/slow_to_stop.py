"""Reports once, then on SIGTERM takes --linger seconds to exit, as a trial saving a checkpoint."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from localbackend import report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--linger", type=float, default=1.0)
    args, _ = parser.parse_known_args()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        time.sleep(args.linger)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    report(ready=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
