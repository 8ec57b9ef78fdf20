"""Checks of one record's arrays before they are written (names, dtypes, shapes, axes)."""

from __future__ import annotations

import numpy as np

from cemaps.errors import StoreError
from cemaps.store.part_index import ArraySchema


def check_array_name(name: object) -> str:
    """Array names are HDF5 paths below /arrays: '/' makes groups, dots are kept."""
    if not isinstance(name, str) or not name or any(p in {"", ".", ".."} for p in name.split("/")):
        raise StoreError(
            f"array name {name!r}: expected a non-empty path like "
            "'cross_attention/down_blocks.0.attentions.0.transformer_blocks.0.attn2'"
        )
    return name


def validate_record(where: str, arrays: dict, axes: dict, schemas: dict[str, ArraySchema]) -> dict[str, np.ndarray]:
    """The arrays of one record as contiguous numpy arrays, checked against the store's ``schemas``.

    Raises:
        StoreError: naming ``where`` and the array: not numeric, empty trailing axes, axis names that
            do not fit, or a trailing shape, dtype or axes other than the store holds for that name.
    """
    if not isinstance(arrays, dict) or not arrays:
        raise StoreError(f"{where}: arrays is {arrays!r:.40}; expected a non-empty dict name -> numpy array")
    if not isinstance(axes, dict):
        raise StoreError(f"{where}: axes is a {type(axes).__name__}; expected a dict name -> tuple of axis names")
    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        check_array_name(name)
        array = np.ascontiguousarray(value)
        if array.dtype.kind not in "biufc" or array.ndim < 1:
            raise StoreError(
                f"{where}: array {name!r} has dtype {array.dtype} and {array.ndim} axes; "
                "expected a numeric numpy array with at least one axis"
            )
        if 0 in array.shape[1:]:
            raise StoreError(f"{where}: array {name!r} has shape {list(array.shape)}; only the first axis may be empty")
        names = axes.get(name)
        if (
            not isinstance(names, list | tuple)
            or len(names) != array.ndim
            or not all(isinstance(a, str) and a for a in names)
        ):
            raise StoreError(
                f"{where}: axes[{name!r}] is {names!r}; expected {array.ndim} axis names for shape {list(array.shape)}"
            )
        schema = ArraySchema(name, tuple(array.shape[1:]), array.dtype, tuple(names))
        known = schemas.get(name)
        if known is not None and known.trailing != schema.trailing:
            raise StoreError(
                f"{where}: array {name!r} has trailing shape {list(schema.trailing)} but the store "
                f"holds {list(known.trailing)} for it; only the first axis may vary"
            )
        if known is not None and known.dtype != schema.dtype:
            raise StoreError(
                f"{where}: array {name!r} has dtype {schema.dtype} but the store holds "
                f"{known.dtype} for it; cast it before writing"
            )
        if known is not None and known.axes != schema.axes:
            raise StoreError(
                f"{where}: array {name!r} has axes {list(schema.axes)} but the store holds {list(known.axes)} for it"
            )
        checked[name] = array
    return checked
