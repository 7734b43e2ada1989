"""Write hand-made result lines, some torn, some not JSON.

``--mode``:
* ``torn``: a complete line, then half a line; touch ``half-written``, wait at
  ``finish``, write the rest of the line, touch ``finished``, wait at ``exit``.
* ``garbage``: good lines mixed with lines that are not JSON objects, then exit.
* ``final_ok``: a last line without newline that is valid JSON, then exit.
* ``final_bad``: a last line without newline that is not valid JSON, then exit.
* ``odd_timestamps``: valid JSON objects whose ``st_worker_timestamp`` is not a
  number (a string, null), as a program in another language might write them.
"""

from __future__ import annotations

import trialkit

mode = trialkit.option("mode", "torn")

if mode == "torn":
    trialkit.append_raw(b'{"i": 0}\n{"i": 1, "pad": "')
    trialkit.touch("half-written")
    trialkit.gate("finish")
    trialkit.append_raw(b'xyz"}\n')
    trialkit.touch("finished")
    trialkit.gate("exit")
elif mode == "garbage":
    trialkit.append_raw(
        b'{"i": 0}\n'  # line 1
        b"this is not json\n"  # line 2
        b"[1, 2, 3]\n"  # line 3: JSON, but not an object
        b'{"i": 1}\n'  # line 4
        b"\xff\xfe\x00 binary\n"  # line 5
        b'{"i": 2, "unclosed": \n'  # line 6
        b'{"i": 3}\n'  # line 7
    )
elif mode == "final_ok":
    trialkit.append_raw(b'{"i": 0}\n{"i": 1}')
elif mode == "final_bad":
    trialkit.append_raw(b'{"i": 0}\n{"i": 1, "cut')
elif mode == "odd_timestamps":
    trialkit.append_raw(
        b'{"i": 0, "st_worker_timestamp": "yesterday"}\n'
        b'{"i": 1, "st_worker_timestamp": null}\n'
        b'{"i": 2}\n'
    )
else:
    raise SystemExit(f"unknown mode {mode!r}")
