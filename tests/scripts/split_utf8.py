"""Print a two-byte UTF-8 character in two writes, waiting between them.

Writes ``ab`` and the first byte of ``é``, touches ``half``, waits at ``go``,
then writes the second byte and ``cd\\n``.
"""

from __future__ import annotations

import sys

import trialkit

encoded = "é".encode()
sys.stdout.buffer.write(b"ab" + encoded[:1])
sys.stdout.buffer.flush()
trialkit.touch("half")
trialkit.gate("go")
sys.stdout.buffer.write(encoded[1:] + b"cd\n")
sys.stdout.buffer.flush()
