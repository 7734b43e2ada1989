"""The orchestrator's side of each scenario: which jobs to run, and the report.

Each module has ``jobs(profile, contenders)`` and ``summarize(results,
profile)``; the code that runs inside the driver processes is in the module
of the same name in ``bench.drivers``.
"""
