"""Checks of the data files that run before the heavy imports (Lightning, transformers, datasets)
and before any model is loaded: the files exist and parse, the columns are there, the labels are
usable (no missing label, at least two classes in train, no val / test label outside them).

Only pandas is needed; a mistake in a file is reported in about a second instead of after the
model has loaded. The data modules keep the same checks (src/data/labels.py) for hub data.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from src.errors import ConfigError, DataError

# file suffix -> (datasets builder, extra reader options)
READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {"keep_default_na": False}),
    # GLUE-style tsv: no quoting at all (SST-2 sentences hold bare quote characters).
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
# data.delimiter: a name or the character itself
DELIMITERS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}


def parse_delimiter(value: Any) -> str | None:
    """`data.delimiter`: null (by the file suffix), tab / comma / semicolon / pipe, or one char."""
    if value is None:
        return None
    text = str(value)
    sep = DELIMITERS.get(text.lower(), text)
    if len(sep) != 1:
        raise ConfigError(
            f"data.delimiter={value!r} is invalid; valid: null (by file suffix), "
            f"{', '.join(n for n in DELIMITERS if n != chr(92) + 't')}, or a single character"
        )
    return sep


# data.quoting: null (by suffix: .csv quotes, .tsv does not), none, csv
QUOTING = {"none": csv.QUOTE_NONE, "csv": csv.QUOTE_MINIMAL}


def parse_quoting(value: Any) -> int | None:
    if value is None:
        return None
    if str(value).lower() not in QUOTING:
        raise ConfigError(
            f"data.quoting={value!r} is invalid; valid: null (by file suffix), none (quote "
            "characters are text: files with stray quotes), csv"
        )
    return QUOTING[str(value).lower()]


def reader_options(
    file: Path, delimiter: str | None, quoting: Any = None
) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder and pandas reader options for `file`."""
    builder, options = READERS[file.suffix.lower()]
    sep = parse_delimiter(delimiter)
    if sep is not None and builder == "csv":
        options = {**options, "sep": sep}
    if parse_quoting(quoting) is not None and builder == "csv":
        options = {**options, "quoting": parse_quoting(quoting)}
    return builder, options


def headerless_names(file: Path, options: dict[str, Any], names: Any) -> list[str]:
    """The column names of a file without a header line: `data.column_names`, else 0, 1, ...
    (as many as its first line has fields)."""
    if names:
        return [str(n) for n in names]
    with file.open(encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    return [str(i) for i in range(len(first.rstrip("\r\n").split(options.get("sep", ","))))]


def read_headerless(
    file: Path, delimiter: Any, quoting: Any, names: Any, columns: list[str] | None = None
) -> Any:
    """A csv / tsv file without a header line as a DataFrame of `names` (or 0, 1, ...): fields
    beyond them on some rows (extra source columns) are ignored. Cells are read as text."""
    import pandas as pd

    builder, options = reader_options(file, delimiter, quoting)
    if builder != "csv":
        raise ConfigError(f"data.header=false is for csv / tsv files, not {file.name}")
    names = headerless_names(file, options, names)
    try:
        return pd.read_csv(
            file,
            header=None,
            names=names,
            usecols=columns if columns is not None else range(len(names)),
            dtype=str,
            **options,
        )
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (pd.errors.ParserError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = delimiter_hint(file, options.get("sep", ","))
        raise DataError(f"cannot parse {file} as {file.suffix[1:]}: {first}{hint}") from e


def check_data_file(path: Any, key: str) -> Path:
    """An existing, readable data file with a known suffix."""
    file = Path(str(path)).expanduser()
    if file.is_dir():
        raise DataError(
            f"{key}={str(path)!r} is a directory; give a file in it "
            f"({', '.join(READERS)}), e.g. {key}={file / 'train.csv'}"
        )
    if not file.is_file():
        raise DataError(
            f"data file not found: {file} (set paths.data_dir=DIR or the FTLAB_DATA_DIR "
            "environment variable, or point data.train_file/data.test_file at your files)"
        )
    if file.suffix.lower() not in READERS:
        raise DataError(f"cannot read {file}: suffix {file.suffix!r}; valid: {', '.join(READERS)}")
    return file


def delimiter_hint(file: Path, sep: str) -> str:
    """What the first lines look like, and the setting that reads them: '' when nothing stands out."""
    try:
        with file.open(encoding="utf-8", errors="replace") as f:
            lines = [line for _, line in zip(range(20), f, strict=False) if line.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    counts = {c: statistics.median(line.count(c) for line in lines) for c in DELIMITER_NAMES}
    best = max(counts, key=counts.__getitem__)
    if best == sep or counts[best] < 1 or counts[best] <= counts.get(sep, 0):
        return ""
    name = DELIMITER_NAMES[best]
    suffix = " (or name the file .tsv)" if best == "\t" else ""
    return (
        f"; its lines hold {counts[best]:g} {name}(s) each, so it looks {name}-separated: "
        f"set data.delimiter={name}{suffix}"
    )


def read_columns(
    file: Path,
    delimiter: str | None,
    columns: list[str] | None,
    quoting: Any = None,
    header: bool = True,
    names: Any = None,
) -> Any:
    """The file as a pandas DataFrame (only `columns`, or just the header when `columns` is [])."""
    import pandas as pd

    if not header:
        frame = read_headerless(file, delimiter, quoting, names)
        return frame.iloc[:0] if columns == [] else frame[columns] if columns else frame
    builder, options = reader_options(file, delimiter, quoting)
    try:
        if builder == "csv":
            if columns == []:
                return pd.read_csv(file, nrows=0, **options)
            return pd.read_csv(file, usecols=columns, **options)
        if builder == "parquet":
            return pd.read_parquet(file, columns=columns or None)
        try:
            frame = pd.read_json(file, lines=True)
        except ValueError:
            frame = pd.read_json(file)
        return frame if not columns else frame[columns]
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (pd.errors.ParserError, ValueError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = delimiter_hint(file, options.get("sep", ",")) if builder == "csv" else ""
        raise DataError(f"cannot parse {file} as {file.suffix[1:]}: {first}{hint}") from e


def check_columns(file: Path, found: list[str], wanted: dict[str, str], delimiter: Any) -> None:
    """Each wanted column (config key -> name) is in the file's header."""
    for key, name in wanted.items():
        if name not in found:
            hint = ""
            if len(found) == 1:  # one column: perhaps another delimiter
                inside = [c for c in DELIMITER_NAMES if c in str(found[0])]
                _, options = reader_options(file, delimiter)
                hint = (
                    f"; the header holds {DELIMITER_NAMES[inside[0]]}s: set "
                    f"data.delimiter={DELIMITER_NAMES[inside[0]]}"
                    if inside
                    else delimiter_hint(file, options.get("sep", ","))
                )
            raise DataError(
                f"column {name!r} ({key}) not in {file}; columns found: "
                f"{', '.join(map(str, found))}{hint or f' (set {key}=...)'}"
            )


def label_columns_wanted(data: Any) -> dict[str, str]:
    """The label column(s) a data config reads, config key -> column name."""
    label_columns = [str(c) for c in data.get("label_columns") or []]
    if label_columns:
        return {f"data.label_columns[{i}]": c for i, c in enumerate(label_columns)}
    return {"data.label_column": data.get("label_column")}


def read_split_files(data: Any, wanted: dict[str, Any]) -> dict[str, tuple[Path, Any]]:
    """Each split's file (`data.<split>_file`): it exists, parses and has the `wanted` columns
    (config key -> name; unset ones are skipped), as the file and a DataFrame of those columns."""
    delimiter = data.get("delimiter")
    read = {
        "quoting": data.get("quoting"),
        "header": data.get("header", True) is not False,
        "names": data.get("column_names"),
    }
    wanted = {k: str(v) for k, v in wanted.items() if v is not None and v != ""}
    frames = {}
    for split in ("train", "val", "test"):
        path = data.get(f"{split}_file")
        if not path:
            continue
        file = check_data_file(path, f"data.{split}_file")
        header = list(read_columns(file, delimiter, [], **read).columns)
        check_columns(file, [str(c) for c in header], wanted, delimiter)
        # every wanted column: pandas decodes (and so checks the UTF-8 of) only what it reads
        frame = read_columns(file, delimiter, list(dict.fromkeys(wanted.values())), **read)
        if frame.empty:
            raise DataError(f"{file} has no examples (empty, or a header line only)")
        frames[split] = (file, frame)
    return frames


def encode_file_labels(data: Any, frames: dict[str, tuple[Path, Any]]) -> tuple[list[str], dict]:
    """The label names and every split's labels, read from `frames` as the task type reads them
    (src/data/labels.py): the classes come from the train split, the others must fit them."""
    from src.data.labels import encode_labels

    columns = list(dict.fromkeys(str(c) for c in label_columns_wanted(data).values()))
    return encode_labels(
        str(data.get("task_type") or "multiclass"),
        {s: {c: frame[c].tolist() for c in columns} for s, (_, frame) in frames.items()},
        {s: str(file) for s, (file, _) in frames.items()},
        str(data.get("label_column")),
        [str(c) for c in data.get("label_columns") or []] or None,
        data.get("label_names"),
    )


def preflight_text_data(data: Any) -> None:
    """The task's local files and label column(s), checked with pandas before anything heavy.

    Skipped when the train file is missing and the task can fall back to the hub (the data
    module reports that case)."""
    train = data.get("train_file")
    if train and not Path(str(train)).expanduser().exists() and data.get("hub"):
        return
    wanted = {
        "data.text_column": data.get("text_column"),
        "data.text_pair_column": data.get("text_pair_column"),
        **label_columns_wanted(data),
    }
    encode_file_labels(data, read_split_files(data, wanted))
