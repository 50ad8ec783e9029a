"""Does a run's validation split rank its checkpoints as dev does? Tests every kept checkpoint of
a run on its val split and on its test split (SST-2 dev) and prints / writes both.

    .venv/bin/python experiments/sst2_full/val_vs_dev.py logs/ft_sst2_full_whole_val/runs/<run> [out.json]

The run must keep every checkpoint (`callbacks.model_checkpoint.save_top_k=-1`, as
`experiment=sst2_full_whole_val` does).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def evaluate(ckpt: Path, split: str, out: Path) -> float:
    subprocess.run(
        [sys.executable, "-m", "src.eval", f"ckpt_path={ckpt}", f"split={split}",
         f"hydra.run.dir={out}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())[f"{split}/acc"]


def main() -> None:
    run = Path(sys.argv[1])
    ckpts = sorted(
        run.glob("checkpoints/epoch*-step*.ckpt"),
        key=lambda p: int(re.search(r"step(\d+)", p.name).group(1)),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, ckpt in enumerate(ckpts):
            val = evaluate(ckpt, "val", Path(tmp) / f"{i}_val")
            dev = evaluate(ckpt, "test", Path(tmp) / f"{i}_test")
            rows.append({"checkpoint": ckpt.name, "val_acc": val, "dev_acc": dev})
            print(f"{ckpt.name}: val {val:.4f}  dev {dev:.4f}", flush=True)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
