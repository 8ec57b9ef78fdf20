"""Downloads the wheels the GPU machine lacks, and prints the ``carry`` list and the one-line call.

    python benchmarks/gpu_wheels.py            # into .gpu-wheels/ (ignored by git)

The device's image (Python 3.12, manylinux x86_64) has torch, transformers, accelerate, h5py,
timm, typer, rich, pandas, ... but not diffusers, open_clip_torch (nor its ``ftfy`` -> ``wcwidth``),
or hdf5plugin; peft is carried too, at this checkout's version, since the image's is not known.
Versions are those installed here (the environment the tests pass in), else ``PINS``.

hdf5plugin's wheel is 46 MB (twelve compression filters) and the device takes 64 MiB in all,
working tree included, so it is rewritten to hold only the Blosc2 filter that store schema v2
uses (``libh5blosc2.so``, 4.7 MB compressed): its ``_config.py`` then lists only ``blosc2`` as
embedded, so ``import hdf5plugin`` registers Blosc2 and does not look for the others, and its
``RECORD`` lists what the wheel holds (pip installs it as any wheel).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".gpu-wheels"
PINS = {
    "diffusers": "0.42.1",
    "open_clip_torch": "3.3.0",
    "ftfy": "6.3.1",
    "wcwidth": "0.9.4",
    "hdf5plugin": "7.1.0",
    "peft": "0.21.2",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
KEPT_FILTERS = ("blosc2",)
DEVICE_LIMIT = 64 * 1024 * 1024  # what travels to the device: working tree + carried paths
COMMAND = "bash benchmarks/gpu_session.sh"


def versions() -> dict[str, str]:
    """Each carried package at the version installed here, else its pin."""
    found = {}
    for name, pin in PINS.items():
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = pin
    return found


def download(dest: Path, wanted: dict[str, str]) -> None:
    """``pip download`` of each wheel for CPython 3.12 on manylinux x86_64, without dependencies."""
    dest.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + [f"{name}=={version}" for name, version in wanted.items()], check=True)


def slim_hdf5plugin(wheel: Path, kept: tuple[str, ...] = KEPT_FILTERS) -> int:
    """Rewrites ``wheel`` in place keeping only the filter libraries in ``kept``; returns bytes saved."""
    before = wheel.stat().st_size
    temporary = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target:
        record_name = next(n for n in source.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in source.infolist():
            name = info.filename
            plugin = re.fullmatch(r"hdf5plugin/plugins/libh5(\w+?)\.\w+", name)
            if (plugin and plugin.group(1) not in kept) or name == record_name:
                continue
            data = source.read(name)
            if name == "hdf5plugin/_config.py":
                data = re.sub(rb"'embedded_filters': \([^)]*\)", repr({"embedded_filters": kept})[1:-1].encode(), data)
                if f"'embedded_filters': {kept!r}".encode() not in data:
                    raise RuntimeError(f"{wheel.name}: _config.py has no embedded_filters entry to rewrite")
            target.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
        rows.append(f"{record_name},,")
        target.writestr(record_name, "\n".join(rows) + "\n")
    temporary.replace(wheel)
    return before - wheel.stat().st_size


def travelling_bytes() -> int:
    """Bytes of the files that travel without ``carry``: tracked, and untracked but not ignored."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sum(
        (ROOT / name).stat().st_size for name in listing.decode().split("\0") if name and (ROOT / name).is_file()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args()
    wanted = versions()
    download(args.dest, wanted)
    wheels = {
        name: sorted(args.dest.glob(f"{name.replace('-', '_')}-{version}-*.whl")) for name, version in wanted.items()
    }
    missing = [name for name, found in wheels.items() if not found]
    if missing:
        raise SystemExit(f"{args.dest}: no wheel for {', '.join(missing)} after pip download")
    saved = slim_hdf5plugin(wheels["hdf5plugin"][0])
    stale = set(args.dest.glob("*.whl")) - {w for found in wheels.values() for w in found}
    for wheel in stale:  # two versions of one package would stop the install on the device
        wheel.unlink()
    carried = sum(w.stat().st_size for w in args.dest.glob("*.whl"))
    total = travelling_bytes() + carried
    print(f"hdf5plugin slimmed to {', '.join(KEPT_FILTERS)}: {saved / 1e6:.1f} MB saved")
    print(f"wheels: {carried / 2**20:.1f} MiB; with the working tree {total / 2**20:.1f} MiB of 64 MiB")
    if total > DEVICE_LIMIT:
        print("WARNING: over the device's 64 MiB: commit or ignore less before calling run", file=sys.stderr)
    relative = args.dest.resolve().relative_to(ROOT)
    print(f'carry: ["{relative}"]')
    print(f"command: {COMMAND}")


if __name__ == "__main__":
    main()
