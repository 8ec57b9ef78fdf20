"""``benchmarks/gpu_wheels.py``: hdf5plugin's wheel keeps only the Blosc2 filter, and stays a valid wheel."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_wheels  # noqa: E402

CONFIG = (
    b"build_config = HDF5PluginBuildConfig(**{'openmp': False, 'filter_file_extension': '.so', "
    b"'embedded_filters': ('blosc', 'blosc2', 'zstd')})\n"
)


def _wheel(path: Path, config: bytes = CONFIG) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("hdf5plugin/__init__.py", b"")
        wheel.writestr("hdf5plugin/_config.py", config)
        for name in ("blosc", "blosc2", "zstd"):
            wheel.writestr(f"hdf5plugin/plugins/libh5{name}.so", name.encode() * 1000)
        wheel.writestr("hdf5plugin-7.1.0.dist-info/RECORD", "stale\n")
    return path


def test_slim_wheel_keeps_blosc2_and_lists_exactly_its_files(tmp_path):
    wheel = _wheel(tmp_path / "hdf5plugin-7.1.0-py3-none-manylinux_2_28_x86_64.whl")
    assert gpu_wheels.slim_hdf5plugin(wheel) > 0
    with zipfile.ZipFile(wheel) as slim:
        names = set(slim.namelist())
        assert "hdf5plugin/plugins/libh5blosc2.so" in names
        assert not {"hdf5plugin/plugins/libh5blosc.so", "hdf5plugin/plugins/libh5zstd.so"} & names
        assert b"'embedded_filters': ('blosc2',)" in slim.read("hdf5plugin/_config.py")
        rows = [row.split(",") for row in slim.read("hdf5plugin-7.1.0.dist-info/RECORD").decode().splitlines()]
        listed = {name for name, *_ in rows}
        assert listed == names
        for name, digest, size in rows:
            if digest:  # every file's hash and size are those of the bytes in the wheel (independently computed)
                data = slim.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert (digest, int(size)) == (f"sha256={expected}", len(data))


def test_a_config_without_the_filter_list_is_refused(tmp_path):
    wheel = _wheel(tmp_path / "hdf5plugin-7.1.0-py3-none-any.whl", config=b"build_config = None\n")
    with pytest.raises(RuntimeError, match="no embedded_filters entry"):
        gpu_wheels.slim_hdf5plugin(wheel)


def test_versions_are_the_installed_ones_else_the_pins(monkeypatch):
    import importlib.metadata as metadata

    def version(name):
        if name == "diffusers":
            return "9.9.9"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gpu_wheels.metadata, "version", version)
    found = gpu_wheels.versions()
    assert found["diffusers"] == "9.9.9" and found["hdf5plugin"] == gpu_wheels.PINS["hdf5plugin"]
    assert set(found) == set(gpu_wheels.PINS)
