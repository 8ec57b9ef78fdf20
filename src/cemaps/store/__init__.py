"""The HDF5 store: append-only, crash-safe, resumable, shardable (schema v2; reads v1).

A store is a manifest ``study.h5`` plus a folder ``study.h5.parts/`` of immutable files:

- ``part-<writer_tag>-<seq>.h5``: records (model_id, prompt_id, seed), one extendable
  chunked dataset per array name with a ragged first axis, ``(start, count)`` offsets per
  record and PNG images (layout in ``part_index.py``). A writer fills ``...h5.tmp`` and
  renames it when ``records_per_part`` records are in it or on close, so a SIGKILL loses
  only the records of the open part; the writer's next start deletes its ``*.tmp``.
- ``meta-<writer_tag>-<seq>.h5``: models, prompts and model-level table rows (``contents.py``).
- ``study.h5``: settings, base, provenance and, rebuilt from the union of sealed files
  after every change, the models/prompts/tables and one HDF5 Virtual Dataset per array
  (``manifest.py``), so plain h5py sees one dataset per array.

Guarantees and choices:

- Concurrency: any number of processes may write one store at once if their writer_tag
  differs; each creates only its own files and every manifest rewrite is rebuilt from the
  union of sealed files (and redone if a file appeared meanwhile), so they converge. The
  reader also takes the union from the parts folder, so it never misses a sealed part.
- Duplicate keys: ``write_record`` refuses a key already in the store; if two parts still
  hold one key (e.g. writers given overlapping shards), the first part by name wins.
  ``merge_stores`` keeps identical duplicates once (warning) and refuses differing ones.
- ``add_models`` / ``add_prompts`` are idempotent; ``write_table`` appends rows but skips
  rows identical to stored ones, so a resumed run may repeat its calls.
- Arrays: Blosc2-Zstd-5 + shuffle (schema v2, the ``hdf5plugin`` filter; v1 stores and the
  parts appended to them use gzip-4 + shuffle), ~256 KiB chunks along the ragged axis;
  images: PNG bytes.
- Virtual datasets use source paths relative to the manifest; HDF5 resolves them against
  the manifest's folder, so ``study.h5`` and ``study.h5.parts/`` may be moved together.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
    >>> with StoreWriter(path, settings={"steps": 2}, base={"model": "tiny"}) as writer:
    ...     writer.write_record("base", "p0", 0, {"attn": np.zeros((4, 2, 2), np.float16)},
    ...                         axes={"attn": ("token", "y", "x")})
    >>> open_store(path).read_one("attn", 0).shape
    (4, 2, 2)
"""

from cemaps.store.merge import merge_stores
from cemaps.store.reader import StoreReader, open_store
from cemaps.store.schema import SCHEMA_VERSION
from cemaps.store.writer import StoreWriter

__all__ = ["SCHEMA_VERSION", "StoreReader", "StoreWriter", "merge_stores", "open_store"]
