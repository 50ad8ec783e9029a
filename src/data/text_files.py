"""One local text data file (csv / tsv / json / jsonl / parquet) as a `datasets.Dataset`, with a
one-line error for a bad path, an empty file, text that is not UTF-8 or a file that does not
parse (naming the likely delimiter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.data.preflight import check_data_file, delimiter_hint, read_headerless, reader_options
from src.errors import DataError

# How files are read unless data.header / data.column_names / data.quoting say otherwise.
DEFAULT_READ = {"quoting": None, "header": True, "column_names": None}


def load_local_split(
    path: str,
    cache_dir: str,
    delimiter: str | None = None,
    quoting: str | None = None,
    header: bool = True,
    column_names: list[str] | None = None,
) -> Any:
    """One local file as a `datasets.Dataset`, with a clear error for a bad path or format.

    `header=False`: a csv / tsv without a header line, its columns named `column_names` (fields
    beyond them on some rows are ignored), read with pandas."""
    from datasets import Dataset, load_dataset

    file = check_data_file(path, "data file")
    builder, options = reader_options(file, delimiter, quoting)
    suffix = file.suffix.lower()
    if not _has_rows(file, header=builder == "csv" and header):
        raise DataError(
            f"{file} has no examples (empty{', or a header line only' if builder == 'csv' else ''})"
        )
    if not header:
        frame = read_headerless(file, delimiter, quoting, column_names)
        return Dataset.from_pandas(frame, preserve_index=False)
    try:
        return load_dataset(
            builder, data_files={"data": str(file)}, split="data", cache_dir=cache_dir, **options
        )
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # pandas/pyarrow parse errors
        chain = _error_chain(e)  # `datasets` wraps the reader's error in its own
        decode = next((c for c in chain if isinstance(c, UnicodeDecodeError)), None)
        if decode is not None or "Invalid UTF8" in str(chain[-1]):
            where = f" ({decode.reason} at byte {decode.start})" if decode else ""
            raise DataError(f"{file} is not UTF-8 text{where}") from e
        hint = delimiter_hint(file, options.get("sep", ",")) if builder == "csv" else ""
        raise DataError(
            f"cannot parse {file} as {suffix[1:]}: {str(chain[-1]).splitlines()[0]}{hint}"
        ) from e


def _has_rows(file: Path, header: bool) -> bool:
    """Cheap: whether a text file holds a record (after the header line for csv / tsv)."""
    if file.suffix.lower() == ".parquet":
        return file.stat().st_size > 0
    with file.open("rb") as f:
        lines = (line for line in f if line.strip())
        return next(lines, None) is not None and (not header or next(lines, None) is not None)


def _error_chain(error: BaseException) -> list[BaseException]:
    """The error and its causes / contexts, outermost first."""
    chain = [error]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain
