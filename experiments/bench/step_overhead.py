"""ftlab's own cost per training step, in milliseconds: ftlab and the plain loop in turns
(src/bench/overhead.py) on a 2-layer, 32-wide BERT, so that the model's compute is ~10 ms and
what the framework adds per step stands out from the machine's noise.

    python -m experiments.bench.step_overhead            # writes experiments/bench/step_overhead.json

Variants: ftlab's defaults; without the progress bar; without any of the config's callbacks;
and the defaults with `self.log("train/loss")` on every training step, as ftlab did until the
module logged it on logging steps only (patched here, not an option of ftlab). Same data as make bench's text case (a 2,058-sentence SST-2 slice, batch 32,
MiniLM's tokenizer), fp32, 200 steps, the first 10 and the epoch boundaries not timed.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from src.bench.overhead import interleaved_run

STEPS, WARMUP, REPS = 200, 10, 3
OUT = Path(__file__).with_name("step_overhead.json")
NO_CALLBACKS = [
    f"callbacks.{name}=null"
    for name in (
        "progress_bar",
        "lr_monitor",
        "finite_loss",
        "early_stopping",
        "model_checkpoint",
        "last_checkpoint",
        "step_checkpoint",
    )
]
VARIANTS = {
    "defaults": [],
    "no progress bar": ["callbacks.progress_bar=null"],
    "no config callbacks": NO_CALLBACKS,
    "train/loss logged every step": [],  # patched below
}


def tiny_bert(root: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with the packaged MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from src.assets import packaged_hf_model

    minilm = packaged_hf_model("sentence-transformers/all-MiniLM-L6-v2")
    tokenizer = BertTokenizerFast.from_pretrained(str(minilm))
    tokenizer.save_pretrained(root)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    return root


def train_loss_logged_every_step() -> None:
    """The training step as it was before the loss went to Lightning on logging steps only."""
    from src.models.classifier import Classifier

    def training_step(self, batch, batch_idx):
        loss = self._loss(self(batch), batch["labels"])
        self._last_train_loss = loss.detach()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    Classifier.training_step = training_step


def main() -> None:
    logging.disable(logging.WARNING)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ftlab-step-overhead-") as tmp:
        model = tiny_bert(Path(tmp) / "tiny_bert")
        base = [
            "task=sentiment",
            "model=bert",
            f"model.pretrained={model}",
            "data.limit_train=2100",
            "optimizer.lr=1e-4",
            "trainer.precision=32-true",
            f"trainer.max_steps={STEPS}",
            "trainer.max_epochs=100",
            "test=false",
        ]
        for name, extra in VARIANTS.items():
            if name == "train/loss logged every step":
                train_loss_logged_every_step()  # the last variant: patches for the rest of the process
            r = results.setdefault(name, {"ftlab_ms": [], "plain_ms": [], "added_ms": []})
            for _ in range(REPS):
                ftlab, plain, _ = interleaved_run("text", [*base, *extra], STEPS, Path(tmp))
                steps = sorted(ftlab.timed(WARMUP) & plain.timed(WARMUP))
                f = [ftlab.step_ends[i] - ftlab.step_ends[i - 1] for i in steps]
                p = [plain.step_ends[i] - plain.step_ends[i - 1] for i in steps]
                r["ftlab_ms"].append(1000 * statistics.mean(f))
                r["plain_ms"].append(1000 * statistics.mean(p))
                r["added_ms"].append(r["ftlab_ms"][-1] - r["plain_ms"][-1])
                print(f"{name}: ftlab adds {r['added_ms'][-1]:.2f} ms a step", file=sys.stderr)
    OUT.write_text(json.dumps({"steps": STEPS, "warmup": WARMUP, "variants": results}, indent=2))


if __name__ == "__main__":
    main()
