"""Code that runs inside a driver process: one module per scenario.

``bench._driver`` imports ``bench.drivers.<scenario>`` and calls its
``run_<contender>(params)``. These modules import only small standard modules
at the top; each contender's library is imported inside its own function, so
no driver carries another contender's imports (peak RSS is measured).
"""
