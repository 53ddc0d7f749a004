"""Where dataset rows come from: a JSONL file, a Parquet file, or a folder saved by Hugging Face
``datasets`` (``Dataset.save_to_disk``), each read row by row.

:func:`open_rows` tells the kind from the path (``.jsonl``, ``.json`` or ``.ndjson``: JSON Lines;
``.parquet``; a folder holding ``state.json``) and yields ``(where, row)`` pairs: ``row`` a plain
dict as a JSONL line would give (Parquet and Arrow values become Python values: strings, numbers,
lists, dicts, ``bytes``), and ``where`` what names the row in an error: ``file:line`` for JSONL
(lines count from 1), ``file: row N`` for Parquet and ``folder: row N`` for a saved dataset (rows
count from 0, as ``df.iloc[N]`` and ``dataset[N]`` index them; a saved dataset's rows run on
across its Arrow files).

Parquet and Arrow files are read one record batch at a time, and of a batch only the columns a row
can use (:data:`COLUMNS`) are read and turned into Python values, at most :data:`CHUNK` rows at a
time; a saved dataset's Arrow files are memory-mapped. An image stays as the encoded bytes (or the
path) of its ``{bytes, path}`` struct until the row is made into an example
(:mod:`cepo.tasks.images` decodes it then).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

COLUMNS = ("prompt", "question", "problem", "answer", "solution", "messages", "images")
"""The columns a row can use (:mod:`cepo.tasks.jsonl`); other columns are never read."""
CHUNK = 64
"""Rows of a record batch turned into Python values at a time."""
KINDS = "a .jsonl (JSON Lines) or .parquet file, or a folder saved by datasets' save_to_disk"


def dataset_kind(path: Path, setting: str) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"arrow"`` (a saved ``datasets`` folder) for ``path``.

    Raises:
        FileNotFoundError: ``"{setting}: dataset file not found: {path}"``.
        ValueError: naming ``setting`` and ``path`` for a file or folder of another kind.
    """
    if path.is_dir():
        if (path / "state.json").is_file():
            return "arrow"
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
            example = f"e.g. {path / splits[0]}" if splits else "none found"
            raise ValueError(
                f"{setting}: {path} holds a DatasetDict (splits {splits}); name one split's folder ({example})"
            )
        raise ValueError(f"{setting}: {path} is a folder without state.json, not a dataset; expected {KINDS}")
    if not path.is_file():
        raise FileNotFoundError(f"{setting}: dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):  # datasets' to_json writes JSON Lines to .json
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{setting}: {path} is not a dataset cepo reads; expected {KINDS}")


def open_rows(path: Path, setting: str) -> Iterator[tuple[str, dict]]:
    """The ``(where, row)`` pairs of the dataset at ``path`` (see the module docstring); the kind
    is checked before the first row is read."""
    kind = dataset_kind(path, setting)
    return {"jsonl": _jsonl_rows, "parquet": _parquet_rows, "arrow": _saved_rows}[kind](path)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}")
            yield f"{path}:{lineno}", row


def _batch_rows(batches: Iterator, name: Path, start: int = 0) -> Iterator[tuple[str, dict]]:
    """Rows of record batches (only :data:`COLUMNS`), :data:`CHUNK` at a time, numbered from ``start``."""
    index = start
    for batch in batches:
        batch = batch.select([c for c in batch.schema.names if c in COLUMNS])
        for offset in range(0, batch.num_rows, CHUNK):
            for row in batch.slice(offset, CHUNK).to_pylist():
                yield f"{name}: row {index}", row
                index += 1


def _unreadable(path: Path, what: str, err: Exception) -> ValueError:
    return ValueError(f"{path}: not {what} pyarrow can read ({str(err).splitlines()[0] if str(err) else err!r})")


def _release(pa) -> None:
    """Hand the memory Arrow's allocator keeps after a read back to the system: its decoded pages
    are freed once their rows are Python values, but the pool held on to them (about 100 MB
    after reading 100 MB of image bytes, measured: benchmarks/README.md)."""
    pa.default_memory_pool().release_unused()


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Only pyarrow's own errors land here: an error the caller raises on a row stays in its frame.
    try:
        file = pq.ParquetFile(path, memory_map=True)
        columns = [c for c in file.schema_arrow.names if c in COLUMNS]
        yield from _batch_rows(file.iter_batches(batch_size=CHUNK * 4, columns=columns), path)
    except (pa.ArrowException, OSError) as err:
        raise _unreadable(path, "a Parquet file", err) from None
    finally:
        _release(pa)


def saved_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in order, as its ``state.json`` names them."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{folder}: state.json does not name the data files as save_to_disk writes them ({err!r})"
        ) from None
    files = [folder / name for name in names]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{folder}: state.json names {file.name}, which is missing")
    return files


def _saved_rows(folder: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa

    index = 0
    for file in saved_files(folder):
        try:
            with pa.memory_map(str(file)) as source:
                reader = pa.ipc.open_stream(source)
                for where, row in _batch_rows(reader, folder, index):
                    index += 1
                    yield where, row
        except (pa.ArrowException, OSError) as err:
            raise _unreadable(file, "an Arrow stream", err) from None
        finally:
            _release(pa)
