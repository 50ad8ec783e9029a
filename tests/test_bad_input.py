"""The bad-input catalogue: each case runs the real CLI and must exit non-zero with a short
message naming the problem, no Python traceback, and every file that existed before intact.

The run dir of the train cases is an existing "precious" run (metrics.json, a checkpoint), as
when a user re-runs in a finished run's dir with a typo; Hydra rewrites only its own `.hydra/`
record and the job log there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli


@dataclass(frozen=True)
class Case:
    module: str
    args: tuple[str, ...]  # `{name}` is replaced by the path of the named bad thing
    needle: str  # what the message must say ({name} replaced too)


def text(*extra: str) -> tuple[str, ...]:
    """A tiny text run that would work, plus the bad override(s), in a run dir of its own."""
    run_dir = (
        ()
        if any(e.startswith("hydra.run.dir=") for e in extra)
        else ("hydra.run.dir={runs}/{case}",)
    )
    return (
        "task=text_csv",
        "model.pretrained={tiny_bert}",
        "data.train_file={train_csv}",
        "data.val_fraction=0.25",
        "data.batch_size=8",
        "data.max_length=64",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "paths.cache_dir={cache}",
        *run_dir,
        *extra,
    )


def image(*extra: str) -> tuple[str, ...]:
    return (
        "task=image_folder",
        "model=resnet18",
        "model.weights=null",
        "model.image_size=32",
        "data.root={images}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        "callbacks.progress_bar=null",
        *(
            ()
            if any(e.startswith("hydra.run.dir=") for e in extra)
            else ("hydra.run.dir={runs}/{case}",)
        ),
        *extra,
    )


def image_table(*extra: str) -> tuple[str, ...]:
    """A tiny task=image_csv run over the tiny image folder's files, plus the bad override(s)."""
    given = {e.split("=", 1)[0] for e in extra}
    base = ["task=image_csv", "data.train_file={colors_csv}", *image()[1:]]
    return (*(a for a in base if a.split("=", 1)[0] not in given), *extra)


CASES: dict[str, Case] = {
    # --- config: composition and values (fail before any data or model is read)
    "unknown_group_option": Case("src.train", text("model=gpt9"), "Could not find 'model/gpt9'"),
    "misspelled_key": Case("src.train", text("optimizer.lrr=1e-3"), "optimizer.lrr"),
    "wrong_type": Case("src.train", text("optimizer.lr=fast"), "optimizer.lr='fast' is invalid"),
    "negative_lr": Case("src.train", text("optimizer.lr=-1"), "optimizer.lr=-1 is invalid"),
    "zero_batch_size": Case("src.train", text("data.batch_size=0"), "data.batch_size=0 is invalid"),
    "impossible_val_fraction": Case(
        "src.train", text("data.val_fraction=1.5"), "data.val_fraction=1.5"
    ),
    "unknown_monitor": Case("src.train", text("monitor=val/accuracy"), "monitor='val/accuracy'"),
    "text_task_image_model": Case(
        "src.train",
        (
            "task=text_csv",
            "data.train_file={train_csv}",
            "model=mobilenet_v2",
            "hydra.run.dir={runs}/{case}",
        ),
        "pick a text model",
    ),
    "unknown_trainer_option": Case("src.train", text("+trainer.warp_speed=9"), "warp_speed"),
    "invalid_precision": Case("src.train", text("trainer.precision=banana"), "banana"),
    "impossible_freeze_depth": Case(
        "src.train",
        text("finetune=partial", "finetune.trainable_groups=99"),
        "finetune.trainable_groups",
    ),
    "unknown_group_name": Case(
        "src.train",
        text("finetune.frozen=[embeddings,layer9]"),
        "finetune.frozen has 'layer9', not a layer group of this model; valid: embeddings, layer0",
    ),
    # --- data
    "missing_data_dir": Case(
        "src.train",
        (
            "task=sentiment",
            "paths.data_dir={missing}",
            "data.hub=null",
            "hydra.run.dir={runs}/{case}",
        ),
        "{missing}/sst2/train.tsv",
    ),
    "empty_dataset": Case(
        "src.train", text("data.train_file={empty_csv}"), "{empty_csv} has no examples"
    ),
    "missing_column": Case(
        "src.train", text("data.text_column=review"), "column 'review' (data.text_column) not in"
    ),
    "label_outside_classes": Case(
        "src.train", text("data.train_file={label7_csv}", "data.label_names=[neg,pos]"), "label 7"
    ),
    "non_utf8_text": Case("src.train", text("data.train_file={latin1_csv}"), "not UTF-8"),
    "unsupported_file_type": Case("src.train", text("data.train_file={xlsx}"), "suffix '.xlsx'"),
    "missing_image_root": Case("src.train", image("data.root={missing}"), "{missing}/train"),
    "truncated_image": Case(
        "src.train", image("data.root={bad_images}"), "cannot read image {truncated_jpg}"
    ),
    # --- models and checkpoints
    "hub_model_offline": Case(
        "src.train", text("model.pretrained=no-such-org/no-such-model"), "no-such-org/no-such-model"
    ),
    "model_dir_without_config": Case(
        "src.train", text("model.pretrained={empty_dir}"), "has no config.json"
    ),
    "unknown_torchvision_weights": Case(
        "src.train", image("model.weights=IMAGENET9"), "model.weights='IMAGENET9'"
    ),
    "resume_without_last_ckpt": Case(
        "src.train", text("ckpt_path=last", "hydra.run.dir={fresh}"), "no such checkpoint file"
    ),
    "resume_corrupt_checkpoint": Case(
        "src.train", text("ckpt_path={corrupt_ckpt}"), "is not a readable checkpoint"
    ),
    "resume_checkpoint_of_another_model": Case(
        "src.train", text("ckpt_path={other_model_ckpt}"), "holds the weights of another model"
    ),
    "eval_corrupt_checkpoint": Case(
        "src.eval",
        ("ckpt_path={corrupt_ckpt}", "hydra.run.dir={precious}"),
        "is not a readable checkpoint",
    ),
    "predict_checkpoint_of_another_model": Case(
        "src.predict",
        ("ckpt_path={mismatched_ckpt}", "input=great", "hydra.run.dir={precious}"),
        "checkpoint weights do not fit model bert: size mismatch for network.model.bert",
    ),
    # --- predict / export / ensemble inputs
    "predict_missing_input_file": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input={missing}/new.csv", "hydra.run.dir={precious}"),
        "no such file",
    ),
    "predict_missing_text_column": Case(
        "src.predict",
        (
            "ckpt_path={good_ckpt}",
            "input={train_csv}",
            "text_column=review",
            "hydra.run.dir={precious}",
        ),
        "column 'review' not in",
    ),
    "predict_unwritable_out": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input=great", "out={blocker}/p.csv", "hydra.run.dir={precious}"),
        "{blocker} is a file, not a folder",
    ),
    "export_unknown_format": Case(
        "src.export",
        ("ckpt_path={good_ckpt}", "format=pdf", "hydra.run.dir={precious}"),
        "format='pdf'",
    ),
    "ensemble_without_members": Case("src.ensemble", ("hydra.run.dir={precious}",), "no members"),
    "unwritable_run_dir": Case("src.train", text("hydra.run.dir={blocker}/run"), "not writable"),
    # --- your own data (issue: no silent wrong results, nothing destroyed, one line and early)
    "label_only_in_test": Case(
        "src.train",
        text("data.test_file={neutral_test_csv}"),
        "label 'neutral' at row 3 of {neutral_test_csv} (column 'label') is not one of the 2 classes",
    ),
    "label_case_differs_in_test": Case(
        "src.train",
        text("data.train_file={words_csv}", "data.test_file={case_test_csv}"),
        "labels are case-sensitive: 'positive' is a class",
    ),
    "eval_ignored_data_key": Case(
        "src.eval",
        ("ckpt_path={good_ckpt}", "+data.text_column=review", "hydra.run.dir={runs}/{case}"),
        "data.text_column is not a setting of this command",
    ),
    "reused_run_dir": Case("src.train", text("hydra.run.dir={precious}"), "already holds a run"),
    "reused_run_dir_image": Case(
        "src.train", image("hydra.run.dir={precious}"), "already holds a run"
    ),
    "seed_not_an_int": Case("src.train", text("seed=abc"), "seed='abc' is invalid"),
    "max_epochs_minus_one": Case(
        "src.train", text("trainer.max_epochs=-1"), "trainer.max_epochs=-1 (no epoch limit)"
    ),
    "max_length_above_the_model": Case(
        "src.train", text("data.max_length=1000"), "data.max_length=1000 is above what model"
    ),
    "missing_train_file": Case(
        "src.train",
        ("task=text_csv", "model.pretrained={tiny_bert}", "hydra.run.dir={runs}/{case}"),
        "data.train_file is not set",
    ),
    "one_class_in_train": Case(
        "src.train", text("data.train_file={one_class_csv}"), "has one class only"
    ),
    "missing_label": Case(
        "src.train",
        text("data.train_file={nan_label_csv}"),
        "missing label ('') in column 'label' at row 4",
    ),
    "misspelled_label_column": Case(
        "src.train", text("data.label_column=lable"), "column 'lable' (data.label_column) not in"
    ),
    "gpu_on_a_cpu_machine": Case(
        "src.train", text("trainer.accelerator=gpu"), "torch sees no CUDA GPU"
    ),
    "semicolon_file_named_csv": Case(
        "src.train", text("data.train_file={semicolon_csv}"), "set data.delimiter=semicolon"
    ),
    "tsv_named_csv": Case("src.train", text("data.train_file={tabs_csv}"), "data.delimiter=tab"),
    "directory_as_data_file": Case(
        "src.train", text("data.train_file={user_data}"), "is a directory"
    ),
    "unknown_data_key": Case(
        "src.train", text("+data.max_len=64"), "data.max_len is not a setting of this task's data"
    ),
    "impossible_test_fraction": Case(
        "src.train", text("data.test_fraction=2"), "data.test_fraction=2 is invalid"
    ),
    "predict_out_is_input": Case(
        "src.predict",
        (
            "ckpt_path={good_ckpt}",
            "input={train_csv}",
            "out={train_csv}",
            "hydra.run.dir={precious}",
        ),
        "is the input file",
    ),
    "predict_mistyped_input_suffix": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input=reviews.cvs", "hydra.run.dir={precious}"),
        "input='reviews.cvs': no such file or folder",
    ),
    "predict_missing_input_folder": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input={missing}/new_reviews", "hydra.run.dir={precious}"),
        "{missing}/new_reviews': no such file or folder",
    ),
    "predict_text_and_input": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "text=great", "input={train_csv}", "hydra.run.dir={precious}"),
        "not both",
    ),
    "predict_nothing_to_predict": Case(
        "src.predict", ("ckpt_path={good_ckpt}", "hydra.run.dir={precious}"), "nothing to predict"
    ),
    "predict_empty_text": Case(
        "src.predict", ("ckpt_path={good_ckpt}", "text=''", "hydra.run.dir={precious}"), "is empty"
    ),
    "predict_input_bad_suffix": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input={xlsx}", "hydra.run.dir={precious}"),
        "suffix '.xlsx'",
    ),
    "predict_missing_checkpoint": Case(
        "src.predict",
        ("ckpt_path={missing}/best.ckpt", "text=great", "hydra.run.dir={precious}"),
        "{missing}/best.ckpt': no such file",
    ),
    "predict_list_with_a_path": Case(
        "src.predict",
        ("ckpt_path={good_ckpt}", "input=[{train_csv},great]", "hydra.run.dir={precious}"),
        "looks like a path",
    ),
    "unknown_delimiter": Case(
        "src.train", text("data.delimiter=colons"), "data.delimiter='colons'"
    ),
    "unknown_length_grouping": Case(
        "src.train",
        text("data.group_by_length=sort"),
        "data.group_by_length='sort' is not one of: true (= megabatch), megabatch, sorted, false",
    ),
    "unknown_allocator": Case(
        "src.train",
        text("allocator=jemalloc"),
        "allocator='jemalloc' is not one of: auto, keep, system",
    ),
    "cpu_threads_interval_zero": Case(
        "src.train",
        text("callbacks.cpu_threads.every_n_seconds=0"),
        "callbacks.cpu_threads.every_n_seconds=0 is invalid: must be a float > 0",
    ),
    # --- a table of images (task=image_csv)
    "image_table_missing_image": Case(
        "src.train",
        image_table("data.train_file={missing_image_csv}"),
        "image file not found: {images}/train/red/99.jpg ('image' = 'train/red/99.jpg' at row 3 of "
        "{missing_image_csv}); 1 more missing (rows 5)",
    ),
    "image_table_path_outside_root": Case(
        "src.train",
        image_table("data.train_file={escaping_csv}"),
        "image path '../elsewhere.jpg' at row 2 of {escaping_csv} (column 'image') is outside "
        "data.root={images}",
    ),
    "image_table_unknown_column": Case(
        "src.train",
        image_table("data.image_column=path"),
        "column 'path' (data.image_column) not in {colors_csv}; columns found: image, label, "
        "brightness",
    ),
    "image_table_missing_path": Case(
        "src.train",
        image_table("data.train_file={no_path_csv}"),
        "missing image path ('') in column 'image' at row 2 of {no_path_csv}",
    ),
    "image_table_root_not_a_folder": Case(
        "src.train", image_table("data.root={missing}"), "data.root='{missing}' is not a folder"
    ),
    "image_table_target_not_a_number": Case(
        "src.train",
        image_table("task.type=regression", "monitor=val/pearson", "data.label_column=label"),
        "target 'blue' at row 1 of {colors_csv} (column 'label') is not a number",
    ),
    "image_table_label_id_out_of_range": Case(
        "src.train",
        image_table(
            "data.train_file={tags_csv}",
            "task.type=multilabel",
            "monitor=val/f1_macro",
            "data.label_names=[red,blue]",
        ),
        "label 2 at row 3 of {tags_csv} (column 'label') is not one of the 2 labels",
    ),
    "image_folder_multilabel": Case(
        "src.train",
        image("+task.type=multilabel", "monitor=val/f1_macro"),
        "task=image_csv for images",
    ),
}

# Cases whose mistake the config or the files' headers alone show: each must be reported before
# Lightning, transformers or datasets are imported, so before any model is loaded.
EARLY = {
    "unknown_group_option", "misspelled_key", "wrong_type", "negative_lr", "zero_batch_size",
    "impossible_val_fraction", "unknown_monitor", "text_task_image_model", "missing_data_dir",
    "empty_dataset", "missing_column", "label_outside_classes", "non_utf8_text",
    "unsupported_file_type", "unwritable_run_dir", "label_only_in_test",
    "label_case_differs_in_test", "reused_run_dir", "reused_run_dir_image", "seed_not_an_int",
    "max_epochs_minus_one", "max_length_above_the_model", "missing_train_file",
    "one_class_in_train", "missing_label", "misspelled_label_column", "gpu_on_a_cpu_machine",
    "semicolon_file_named_csv", "tsv_named_csv", "directory_as_data_file", "unknown_data_key",
    "impossible_test_fraction", "unknown_delimiter", "unknown_length_grouping",
    "cpu_threads_interval_zero",
    "predict_out_is_input",
    "predict_mistyped_input_suffix", "predict_missing_input_folder", "predict_text_and_input",
    "predict_nothing_to_predict", "predict_empty_text", "predict_input_bad_suffix",
    "predict_missing_checkpoint", "predict_list_with_a_path", "image_table_missing_image",
    "image_table_path_outside_root", "image_table_unknown_column", "image_table_missing_path",
    "image_table_root_not_a_folder", "image_table_target_not_a_number",
    "image_table_label_id_out_of_range", "image_folder_multilabel",
}  # fmt: skip
HEAVY_MODULES = ("lightning", "transformers", "datasets")


def fake_checkpoint(tiny_bert_dir: Path, weights_from: Path, path: Path) -> Path:
    """An ftlab checkpoint whose config says `tiny_bert_dir` but whose weights come from the
    model in `weights_from` (the same when both are equal): built in-process, no training."""
    from omegaconf import OmegaConf

    from src.models.classifier import Classifier
    from src.models.networks import build_network

    def model_cfg(pretrained: Path):
        return OmegaConf.create(
            {"name": "bert", "family": "hf", "modality": "text", "pretrained": str(pretrained)}
        )

    network = build_network(model_cfg(weights_from), ["neg", "pos"], pretrained_weights=False)
    module = Classifier(network=network, label_names=["neg", "pos"], optimizer=None)
    config = {
        "model": OmegaConf.to_container(model_cfg(tiny_bert_dir)),
        "task": {"name": "text_csv", "modality": "text"},
        "data": {"max_length": 32, "text_pair_column": None},
    }
    torch.save(
        {
            "state_dict": module.state_dict(),
            "global_step": 0,
            "hyper_parameters": {"config": config, "label_names": ["neg", "pos"]},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def things(tiny_bert, tiny_text_data, tiny_images, tmp_path_factory) -> dict[str, Path]:
    """Every bad (and good) thing the cases name, built once."""
    from PIL import Image
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("bad_input")
    t: dict[str, Path] = {
        "tiny_bert": tiny_bert,
        "train_csv": tiny_text_data / "train.csv",
        "images": tiny_images,
    }
    t["cache"] = root / "cache"
    t["runs"] = root / "runs"  # each case's own run dir: runs/<case>
    t["missing"] = root / "does_not_exist"
    t["fresh"] = root / "fresh_run"
    t["empty_dir"] = root / "empty_model_dir"
    t["empty_dir"].mkdir()
    t["blocker"] = root / "a_file"
    t["blocker"].write_text("a file, not a folder\n")
    t["empty_csv"] = root / "empty.csv"
    t["empty_csv"].write_text("text,label\n")
    t["label7_csv"] = root / "label7.csv"
    t["label7_csv"].write_text(
        "text,label\n" + "".join(f"good film {i},{i % 2}\n" for i in range(20)) + "odd film,7\n"
    )
    t["latin1_csv"] = root / "latin1.csv"
    t["latin1_csv"].write_bytes(
        b"text,label\n" + "caf\xe9 cr\xe8me,1\nbad,0\n".encode("latin-1") * 10
    )
    t["xlsx"] = root / "train.xlsx"
    t["xlsx"].write_bytes(b"PK\x03\x04 not really a spreadsheet")
    # A user's own files with the mistakes of the catalogue's "your own data" cases.
    user = root / "user_data"
    user.mkdir()
    t["user_data"] = user
    rows = [f"good film {i},{i % 2}\n" for i in range(20)]
    good = "".join(rows)

    def write(name: str, content: str) -> None:
        t[name] = user / f"{name.rsplit('_', 1)[0]}.{name.rsplit('_', 1)[1]}"
        t[name].write_text(content)

    write("neutral_test_csv", "text,label\ngood film,1\nbad film,0\nmeh film,neutral\n")
    words = "".join(f"film {i},{'positive' if i % 2 else 'negative'}\n" for i in range(20))
    write("words_csv", "text,label\n" + words)
    write("case_test_csv", "text,label\nfine film,positive\nbad film,Positive\n")
    write("one_class_csv", "text,label\n" + "".join(f"film {i},1\n" for i in range(10)))
    write("nan_label_csv", "text,label\n" + "".join(rows[:3]) + "odd film,\n" + "".join(rows[3:]))
    # A semicolon file named .csv, whose texts hold commas: pandas fails to parse it.
    semi = "".join(f"film {i}{', really' * (i % 3)};{i % 2}\n" for i in range(20))
    write("semicolon_csv", "text;label\n" + semi)
    write("tabs_csv", "text\tlabel\n" + good.replace(",", "\t"))
    # Tables of the tiny image folder's files (task=image_csv), relative to its root.
    tables = root / "tables"
    tables.mkdir()
    files = [f"train/{c}/{i}.jpg" for i in range(1, 7) for c in ("blue", "red")]

    def table(name: str, rows: list[str], header: str = "image,label,brightness") -> None:
        t[name] = tables / f"{name.rsplit('_', 1)[0]}.csv"
        t[name].write_text("\n".join([header, *rows]) + "\n")

    table("colors_csv", [f"{f},{f.split('/')[1]},{i / 10}" for i, f in enumerate(files)])
    moved = [f"{f},{f.split('/')[1]},0.5" for f in files]
    table("missing_image_csv", [*moved[:2], "train/red/99.jpg,red,0.5", moved[2], "x/1.jpg,red,1"])
    table("escaping_csv", [moved[0], "../elsewhere.jpg,red,0.5", *moved[1:]])
    table("no_path_csv", [moved[0], ",red,0.5", *moved[1:]])
    table("tags_csv", [f'{f},"0,1"' for f in files[:2]] + [f"{files[2]},2"], "image,label")
    t["corrupt_ckpt"] = root / "corrupt.ckpt"
    t["corrupt_ckpt"].write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)

    # An image folder whose red class holds one JPEG, cut in half. (Unreadable images are
    # dropped and counted in data_report.json; a class left with none readable is an error.)
    bad = root / "bad_images"
    for cls, color in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
        (bad / "train" / cls).mkdir(parents=True)
        for i in range(6) if cls == "blue" else [3]:
            Image.new("RGB", (40, 40), color).save(bad / "train" / cls / f"{i}.jpg")
    t["truncated_jpg"] = bad / "train" / "red" / "3.jpg"
    data = t["truncated_jpg"].read_bytes()
    t["truncated_jpg"].write_bytes(data[: len(data) // 2])
    t["bad_images"] = bad

    # Checkpoints: a good one, and ones whose weights belong to a wider BERT.
    wide = root / "wide_bert"
    BertModel(
        BertConfig(
            vocab_size=40,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(wide)
    t["good_ckpt"] = fake_checkpoint(tiny_bert, tiny_bert, root / "good.ckpt")
    t["mismatched_ckpt"] = fake_checkpoint(tiny_bert, wide, root / "mismatched.ckpt")
    t["other_model_ckpt"] = t["mismatched_ckpt"]

    # A finished run a typo must not damage.
    precious = root / "precious_run"
    (precious / "checkpoints").mkdir(parents=True)
    (precious / "metrics.json").write_text('{"test/acc": 0.93}\n')
    (precious / "checkpoints" / "last.ckpt").write_bytes(t["good_ckpt"].read_bytes())
    t["precious"] = precious
    return t


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under `paths`, except Hydra's own per-invocation records."""
    prints = {}
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if ".hydra" in f.parts or f.suffix == ".log":
                continue
            prints[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return prints


def run_catalogue(cases_file: str, results_file: str) -> None:
    """Run every case as `python -m MODULE ARGS...` runs it — runpy with `__main__`, the real argv,
    Hydra, exit status, stderr at the file-descriptor level — one after another in this process,
    so the ~15 s import of the stack is paid once instead of once per case."""
    import json
    import os
    import runpy
    import sys
    import tempfile
    import time
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    spec = json.loads(Path(cases_file).read_text())
    guarded = [Path(p) for p in spec["guarded"]]
    results = {}
    for name, case in spec["cases"].items():
        before = fingerprint(guarded)
        started = time.perf_counter()
        GlobalHydra.instance().clear()
        sys.argv = [case["module"], *case["args"]]
        with tempfile.TemporaryFile() as capture:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(capture.fileno(), 2)
            try:
                runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:
                traceback.print_exc()  # what the interpreter prints for an uncaught exception
                code = 1
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            err = capture.read().decode("utf-8", errors="replace")
        after = fingerprint(guarded)  # new files are fine; changed or deleted ones are not
        results[name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "heavy_imports": [m for m in HEAVY_MODULES if m in sys.modules],
            "returncode": code,
            "stderr": err,
            "unchanged": all(after.get(f) == h for f, h in before.items()),
        }
    Path(results_file).write_text(json.dumps(results))


def case_args(name: str, case: Case, things: dict[str, Path]) -> list[str]:
    fill = {k: str(v) for k, v in things.items()}
    return [a.format(case=name, **fill) for a in case.args]


def guarded_paths(things: dict[str, Path]) -> list[Path]:
    return [
        things[k]
        for k in (
            "precious",
            "tiny_bert",
            "images",
            "bad_images",
            "good_ckpt",
            "blocker",
            "user_data",
        )
    ] + [things["train_csv"].parent]


@pytest.fixture(scope="module")
def results(things: dict[str, Path], tmp_path_factory) -> dict[str, dict]:
    import json

    root = tmp_path_factory.mktemp("catalogue")
    spec = {
        "guarded": [str(p) for p in guarded_paths(things)],
        # The early cases first: once a case has imported Lightning, it stays imported.
        "cases": {
            n: {"module": c.module, "args": case_args(n, c, things)}
            for n, c in sorted(CASES.items(), key=lambda item: item[0] not in EARLY)
        },
    }
    (root / "cases.json").write_text(json.dumps(spec))
    proc = run_cli(
        "tests.test_bad_input", str(root / "cases.json"), str(root / "results.json"), timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_cleanly(
    name: str, results: dict[str, dict], things: dict[str, Path]
) -> None:
    result = results[name]
    err = result["stderr"]
    assert result["returncode"] != 0, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    needle = CASES[name].needle.format(**{k: str(v) for k, v in things.items()})
    assert needle in err, err[-2000:]
    line = next(line for line in err.splitlines() if needle in line)
    assert len(line) < 500, line  # a short message, not a dump
    assert result["unchanged"], "a failed run changed files that existed before"
    assert not things["missing"].exists()
    if name in EARLY:  # reported before the heavy imports, so in about a second or two
        assert not result["heavy_imports"], (result["heavy_imports"], result["seconds"])


def test_the_catalogue_covers_the_promised_cases() -> None:
    assert len(CASES) >= 50
    assert set(CASES) >= EARLY


@pytest.mark.parametrize("name", ["unknown_trainer_option"])
def test_a_separate_process_fails_the_same_way(
    name: str, results: dict[str, dict], things: dict[str, Path]
) -> None:
    """The catalogue runs in one process; a fresh `python -m` process gives the same outcome."""
    proc = run_cli(CASES[name].module, *case_args(name, CASES[name], things), timeout=300)
    assert proc.returncode == results[name]["returncode"] == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines and error_lines == [
        line for line in results[name]["stderr"].splitlines() if line.startswith("error:")
    ]


if __name__ == "__main__":  # python -m tests.test_bad_input CASES.json RESULTS.json
    import sys

    run_catalogue(sys.argv[1], sys.argv[2])
