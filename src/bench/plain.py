"""The baselines: a minimal hand-written PyTorch training loop, and Hugging Face's Trainer.

Each gets the same network (built by ftlab's own builder from the same pretrained weights), the
same examples, batch size, learning rate, schedule, gradient clipping, precision and threads as
the ftlab run it is compared with.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils.data import DataLoader

from src.bench.timing import StepLog


def _autocast(precision: str):
    if precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PlainLoop:
    """A minimal PyTorch training loop, one step per `step()` call, cycling over `loader`'s epochs.

    `make_optimizer(param_groups)` (the run's own optimizer config, e.g. fused AdamW) over the
    run's param groups (one per layer group, weight decay off for biases and norms: the same
    update as the ftlab run, so only the loop around it differs) + transformers' linear warmup
    schedule over `max_steps`, grad-norm clipping at 1.0, autocast. Each step's end goes into
    `self.steps` (a StepLog)."""

    def __init__(
        self,
        network: torch.nn.Module,
        loader: DataLoader,
        make_optimizer: Any,
        max_steps: int,
        precision: str,
        warmup_fraction: float = 0.06,
    ) -> None:
        from transformers import get_linear_schedule_with_warmup

        from src.optim import discriminative_param_groups

        self.network, self.loader, self.precision = network.train(), loader, precision
        lr = make_optimizer.keywords["lr"]
        weight_decay = make_optimizer.keywords.get("weight_decay", 0.0)
        self.optimizer = make_optimizer(discriminative_param_groups(network, lr, 1.0, weight_decay))
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(warmup_fraction * max_steps), max_steps
        )
        self.steps = StepLog()
        self._batches = None

    def _next_batch(self) -> dict[str, torch.Tensor]:
        if self._batches is not None:
            batch = next(self._batches, None)
            if batch is not None:
                return batch
        self.steps.epoch_start()
        self._batches = iter(self.loader)
        return next(self._batches)

    def step(self) -> None:
        batch = self._next_batch()
        with torch.enable_grad():  # also when called from a Lightning hook
            with _autocast(self.precision):
                logits = self.network(batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.steps.step_end(len(batch["labels"]))


def hf_trainer(
    model: torch.nn.Module,
    tokenizer: Any,
    train_ds: Any,
    *,
    pad_to_128: bool,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    precision: str,
    seed: int,
    out_dir: str,
    steps: StepLog | None = None,
    callbacks: list[Any] | None = None,
) -> tuple[Any, StepLog]:
    """transformers' Trainer set up to train `model` (with `callbacks` too), and the StepLog its
    steps go into (`steps` when given: e.g. one on a turn-taking clock).

    pad_to_128: as run_glue does by default (`pad_to_max_length`: every example padded to
    max_seq_length=128 at tokenization); else at its best: dynamic padding
    (DataCollatorWithPadding) and `train_sampling_strategy="group_by_length"`.
    """
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    steps = StepLog() if steps is None else steps

    class Timer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            steps.epoch_start()

        def on_step_end(self, args, state, control, **kwargs):
            # the last batch may be smaller: counted as full; its tokens are its own
            steps.step_end(batch_size, made[len(steps.step_ends)])

    if pad_to_128:
        train_ds = _pad_to(train_ds, tokenizer, 128)
        collate = default_data_collator
    else:
        collate = DataCollatorWithPadding(tokenizer)
    made: list[int] = []  # the tokens of each batch the collator made, in order (0 workers)

    def collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        made.append(int(batch["input_ids"].numel()))
        return batch

    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=128,
        learning_rate=lr,
        weight_decay=weight_decay,
        num_train_epochs=epochs,
        lr_scheduler_type="linear",
        warmup_steps=0.06,  # < 1: a fraction of the training steps
        max_grad_norm=1.0,
        bf16=precision.startswith("bf16"),
        use_cpu=True,
        train_sampling_strategy="random" if pad_to_128 else "group_by_length",
        length_column_name="length",
        dataloader_num_workers=0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        callbacks=[Timer(), *(callbacks or [])],
    )
    return trainer, steps


def hf_accuracy(trainer: Any, eval_ds: Any, tokenizer: Any, pad_to_128: bool) -> float:
    """The trained model's accuracy on `eval_ds`, predicted by the Trainer."""
    import numpy as np

    if pad_to_128:
        eval_ds = _pad_to(eval_ds, tokenizer, 128)
    predictions = trainer.predict(eval_ds)
    return float((np.argmax(predictions.predictions, axis=-1) == predictions.label_ids).mean())


def hf_trainer_run(
    model: torch.nn.Module, tokenizer: Any, train_ds: Any, eval_ds: Any, **settings: Any
) -> tuple[StepLog, float]:
    """Train with transformers' Trainer (`settings`: those of `hf_trainer`); return its StepLog
    and the accuracy on `eval_ds`."""
    trainer, steps = hf_trainer(model, tokenizer, train_ds, **settings)
    trainer.train()
    return steps, hf_accuracy(trainer, eval_ds, tokenizer, settings["pad_to_128"])


def _pad_to(ds: Any, tokenizer: Any, length: int) -> Any:
    """Token ids padded to `length`, as a `padding="max_length"` tokenization gives."""

    def pad(batch: dict[str, list]) -> dict[str, Any]:
        features = [
            {
                k: batch[k][i]
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in batch
            }
            for i in range(len(batch["input_ids"]))
        ]
        padded = tokenizer.pad(features, padding="max_length", max_length=length)
        return dict(padded)

    return ds.map(pad, batched=True)
