"""The driver's core: ``LocalBackend`` and everything it owns.

The backend's options, the experiment folder (its lock and journal), the
trial table and its records, result reading, restore, checkpoint storage
and GPU allocation. Where trials run is not the core's business: it talks
to a ``localbackend.launchers.Launcher``.
"""
