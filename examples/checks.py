"""Check functions for ``[[custom]]`` watchers in examples/watchkeeper.toml.

A config's ``call = "checks:free_disk"`` finds this module because modules next to the config
file can be imported by their name.
"""

from __future__ import annotations

import shutil

from watchkeeper import Observation


def free_disk() -> Observation | None:
    """Warn while the root file system has less than 5% free."""
    usage = shutil.disk_usage("/")
    free = usage.free / usage.total
    if free < 0.05:
        return Observation(
            f"disk / is {100 - free * 100:.0f}% full",
            severity="error",
            key="disk-root",
            data={"free_bytes": usage.free},
        )
    return None
