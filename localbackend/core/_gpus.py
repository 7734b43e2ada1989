"""Which GPUs a new trial gets, among those the launcher found."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import BackendConfigurationError


class GpuAllocator:
    """Hands out GPUs as Syne Tune's ``LocalBackend`` does (``rotate_gpus``).

    A new trial gets free GPUs first; among free ones, and among all of them
    when every GPU is busy, those assigned least often so far, lowest index
    first on ties. With ``rotate=False`` no GPU is assigned: every trial sees
    all of them.
    """

    def __init__(
        self, devices: Sequence[str], gpus_to_use: Sequence[int] | None, per_trial: int,
        *, rotate: bool = True,
    ) -> None:
        if gpus_to_use is not None:
            bad = [g for g in gpus_to_use if isinstance(g, bool) or not isinstance(g, int)
                   or not 0 <= g < len(devices)]
            if bad or len(set(gpus_to_use)) != len(gpus_to_use) or not gpus_to_use:
                raise BackendConfigurationError(
                    "gpus_to_use", list(gpus_to_use),
                    f"is not a non-empty list of distinct GPU indices below {len(devices)} "
                    f"(this machine has {len(devices)} GPUs)",
                    "Pass indices such as [0, 1], or leave it unset to use every GPU.",
                )
            self.devices = [devices[g] for g in gpus_to_use]
        else:
            self.devices = list(devices)
        if self.devices and not 1 <= per_trial <= len(self.devices):
            raise BackendConfigurationError(
                "num_gpus_per_trial", per_trial,
                f"must be between 1 and the {len(self.devices)} GPUs available",
                "Lower num_gpus_per_trial or make more GPUs available.",
            )
        self.per_trial = per_trial
        self.rotate = rotate
        self.holders: dict[int, list[str]] = {}
        self.times_assigned = {device: 0 for device in self.devices}

    def allocate(self, trial_id: int) -> list[str]:
        """Give ``trial_id`` its GPUs: free ones first, then the least often assigned."""
        if not self.devices or not self.rotate:
            return []
        busy = {device for held in self.holders.values() for device in held}
        order = sorted(self.devices, key=lambda d: (
            d in busy, self.times_assigned.get(d, 0), self.devices.index(d)
        ))
        chosen = sorted(order[: self.per_trial], key=self.devices.index)
        for device in chosen:
            self.times_assigned[device] = self.times_assigned.get(device, 0) + 1
        self.holders[trial_id] = chosen
        return chosen

    def release(self, trial_id: int) -> None:
        self.holders.pop(trial_id, None)

    def undo(self, trial_id: int, held_before: Sequence[str] | None) -> None:
        """Take back an ``allocate`` whose launch failed: as if it had not happened."""
        for device in self.holders.pop(trial_id, []):
            self.times_assigned[device] = max(0, self.times_assigned.get(device, 0) - 1)
        if held_before is not None:
            self.hold(trial_id, held_before)

    def in_use(self) -> dict[str, int]:
        return {d: sum(d in h for h in self.holders.values()) for d in self.devices}

    def hold(self, trial_id: int, devices: Sequence[str]) -> None:
        """Count ``devices`` as used by ``trial_id`` until ``release``.

        For a run this allocator did not hand GPUs to: one that outlived an
        earlier driver and was re-attached by ``restore``, with the GPUs its
        launch recorded.
        """
        self.holders[trial_id] = [str(device) for device in devices]


__all__ = ["GpuAllocator"]
