"""Default provenance of a writer: package versions, host, time."""

from __future__ import annotations

import os
import platform
import socket
from datetime import UTC, datetime
from importlib import metadata

_PACKAGES = ("cemaps", "torch", "diffusers", "transformers", "peft", "open_clip_torch", "h5py", "numpy", "pandas")


def default_provenance() -> dict:
    """What produced a store: versions of the packages that matter, host, pid, UTC time."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import h5py  # noqa: PLC0415 - h5py's own HDF5 build is provenance too

    versions["hdf5"] = h5py.version.hdf5_version
    return {
        "packages": versions,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created_at": datetime.now(UTC).isoformat(),
    }
