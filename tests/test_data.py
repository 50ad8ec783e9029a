"""Data modules: loading, label checks, validation carving, the tokenization cache, images."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from src.data.image import ImageDataModule
from src.data.text import TextDataModule
from src.errors import DataError
from src.models.networks import ImagePreprocessing, build_processor


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return build_processor(OmegaConf.create({"family": "hf", "pretrained": str(tiny_bert)}))


def text_dm(tokenizer, tmp_path, **kw) -> TextDataModule:
    args = {"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.25, "batch_size": 8, **kw}
    return TextDataModule(tokenizer, **args)


def test_text_splits_labels_and_dynamic_padding(tokenizer, tiny_text_data, tmp_path) -> None:
    dm = text_dm(
        tokenizer,
        tmp_path,
        train_file=str(tiny_text_data / "train.csv"),
        test_file=str(tiny_text_data / "test.csv"),
    )
    dm.setup("fit")
    assert dm.label_names == ["0", "1"]
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 120, "val": 40, "test": 40}
    # stratified: the carved validation split keeps the 50/50 balance
    assert sum(dm.splits["val"]["labels"]) == 20
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    longest = max(dm.splits["train"]["length"])
    assert batch["input_ids"].shape[1] <= longest  # padded per batch, not to max_length


def test_sorted_length_grouping_pads_less_than_megabatches(tokenizer, tmp_path) -> None:
    rng = random.Random(0)
    csv = tmp_path / "train.csv"
    rows = [f"{' '.join(['good'] * rng.randint(1, 40))},{i % 2}" for i in range(200)]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")

    def padded(group_by_length) -> tuple[int, int]:
        dm = text_dm(
            tokenizer,
            tmp_path,
            train_file=str(csv),
            group_by_length=group_by_length,
            batch_size=4,
        )
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert sum(len(b["labels"]) for b in batches) == len(dm.splits["train"])
        return sum(b["input_ids"].numel() for b in batches), sum(
            int(b["attention_mask"].sum()) for b in batches
        )

    sorted_, real = padded("sorted")
    megabatch, _ = padded(True)
    assert real <= sorted_ < megabatch


def test_tokenization_is_cached_on_disk(tokenizer, tiny_text_data, tmp_path, monkeypatch) -> None:
    files = {
        "train_file": str(tiny_text_data / "train.csv"),
        "test_file": str(tiny_text_data / "test.csv"),
    }
    first = text_dm(tokenizer, tmp_path, **files)
    first.setup()
    calls = []
    original = TextDataModule._tokenize
    monkeypatch.setattr(
        TextDataModule,
        "_tokenize",
        lambda self, ds, *a, **k: calls.append(1) or original(self, ds, *a, **k),
    )
    second = text_dm(tokenizer, tmp_path, **files)
    second.setup()
    assert calls == [] and second.label_names == first.label_names
    assert second.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]
    # another max_length is another cache entry
    third = text_dm(tokenizer, tmp_path, max_length=4, **files)
    third.setup()
    assert calls


@pytest.mark.parametrize(
    ("name", "content"),
    [
        # SST-2's tsv: quotes are plain characters, an unmatched one included
        (
            "train.tsv",
            'sentence\tlabel\nit \'s a "great" film\t1\n" dull\t0\na good one\t1\nbad bad\t0\n',
        ),
        # csv: a quoted field keeps its line breaks, commas and doubled quotes
        (
            "train.csv",
            'sentence,label\n"a good\nfilm, really",1\n"bad,\r\nbad",0\nfine,1\n"dull ""and"" slow",0\n',
        ),
    ],
)
def test_quoting_as_each_format_ships_it(tokenizer, tmp_path, name, content) -> None:
    data = tmp_path / name
    data.write_text(content)
    dm = text_dm(
        tokenizer, tmp_path, train_file=str(data), text_column="sentence", val_fraction=0.5
    )
    dm.setup()
    labels = list(dm.splits["train"]["labels"]) + list(dm.splits["val"]["labels"])
    assert sorted(labels) == [0, 0, 1, 1]  # 4 examples: no row split or merged at a quote


def test_missing_column_lists_columns(tokenizer, tiny_text_data, tmp_path) -> None:
    dm = text_dm(
        tokenizer, tmp_path, train_file=str(tiny_text_data / "train.csv"), text_column="review"
    )
    with pytest.raises(
        DataError, match=r"column 'review' not in the train data; columns found: text, label"
    ):
        dm.setup()


def test_label_outside_classes_is_named(tokenizer, tiny_text_data, tmp_path) -> None:
    dm = text_dm(
        tokenizer, tmp_path, train_file=str(tiny_text_data / "train.csv"), label_names=["only"]
    )
    with pytest.raises(
        DataError,
        match="label 1 at row 2 of .*train.csv .column 'label'. is not one of the 1 classes",
    ):
        dm.setup()


def test_missing_file_names_path_and_setting(tokenizer, tmp_path) -> None:
    dm = text_dm(tokenizer, tmp_path, train_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="nope.csv.*paths.data_dir"):
        dm.setup()


def test_missing_local_sst2_and_no_network_names_both_remedies(
    tokenizer, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dm = text_dm(
        tokenizer,
        tmp_path,
        train_file=str(tmp_path / "sst2/train.tsv"),
        hub={
            "path": "nyu-mll/glue",
            "name": "sst2",
            "train_split": "train",
            "test_split": "validation",
        },
    )
    with pytest.raises(DataError) as e:
        dm.setup()
    assert "paths.data_dir" in str(e.value) and "internet" in str(e.value)


def test_string_labels_are_mapped_sorted(tokenizer, tmp_path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(
        "text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(10))
    )
    dm = text_dm(tokenizer, tmp_path, train_file=str(csv), val_fraction=0.2)
    dm.setup()
    assert dm.label_names == ["neg", "pos"]


PRE = ImagePreprocessing(resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_image_folder_carves_val_and_reads_gif(tiny_images) -> None:
    dm = ImageDataModule(PRE, root=str(tiny_images), val_fraction=0.25, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.label_names == ["blue", "red"]
    assert len(dm.splits["train"]) == 30 and len(dm.splits["val"]) == 10
    assert dm.splits["test"].base is dm.splits["val"].base
    base = dm.splits["train"].base.dataset
    assert any(path.endswith(".gif") for path, _ in base.samples)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32


def test_eval_transform_is_deterministic(tiny_images) -> None:
    dm = ImageDataModule(PRE, root=str(tiny_images), val_fraction=0.25, num_workers=0)
    dm.setup()
    a, b = dm.splits["val"][0]["pixel_values"], dm.splits["val"][0]["pixel_values"]
    assert torch.equal(a, b)


def test_missing_image_root_is_named(tmp_path) -> None:
    dm = ImageDataModule(PRE, root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere/train.*data.root"):
        dm.setup()


def test_cache_entry_published_by_another_process_is_kept(
    tokenizer, tiny_text_data, tmp_path, monkeypatch
) -> None:
    """Parallel sweep trials tokenize the same data at once: the loser of the race must not
    delete the entry the winner published (and may be reading)."""
    from pathlib import Path

    files = {
        "train_file": str(tiny_text_data / "train.csv"),
        "test_file": str(tiny_text_data / "test.csv"),
    }
    first = text_dm(tokenizer, tmp_path, **files)
    first.setup()
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    inode = entry.stat().st_ino
    # The second process looked before the first one published: it misses the cache.
    is_file = Path.is_file
    monkeypatch.setattr(
        Path, "is_file", lambda self: False if self.name == "dataset_dict.json" else is_file(self)
    )
    second = text_dm(tokenizer, tmp_path, **files)
    second.setup()
    assert entry.stat().st_ino == inode
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no temp dir left
    assert second.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]


def test_whole_texts_and_containment_are_by_words() -> None:
    from src.data.whole_texts import contained_mask, whole_text_mask

    texts = ["A good film", "good film", "good", "goodness", "a good film", "dull plot"]
    assert whole_text_mask(texts) == [True, False, False, True, True, True]
    assert contained_mask(texts, ["a GOOD film"]) == [True, True, True, False, True, False]


def phrase_data(tmp_path, n_sentences: int = 40):
    """Sentences of 4 words, each followed by two of its phrases with the same label (as SST-2)."""
    rng = random.Random(1)
    rows = []
    for i in range(n_sentences):
        label = i % 2
        words = [f"w{rng.randrange(10_000)}" for _ in range(3)] + ["good" if label else "bad"]
        rows += [f"{' '.join(words)},{label}", f"{' '.join(words[1:])},{label}"]
        rows.append(f"{' '.join(words[2:])},{label}")
    csv = tmp_path / "phrases.csv"
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    return csv


def test_carve_whole_texts_holds_out_sentences_and_drops_their_phrases(tokenizer, tmp_path) -> None:
    csv = phrase_data(tmp_path)
    dm = text_dm(
        tokenizer,
        tmp_path,
        train_file=str(csv),
        val_fraction=0.1,
        test_fraction=0.1,
        carve_whole_texts=True,
    )
    dm.setup()
    val, test = (list(dm.splits[s]["text"]) for s in ("val", "test"))
    # test first: 10% of 120 rows; then val: 10% of the 84 rows left; sentences only
    assert len(test) == 12 and len(val) == 8
    assert all(len(t.split()) == 4 for t in val + test)
    assert sum(dm.splits["val"]["labels"]) == 4  # stratified
    # every phrase of a held-out sentence is gone from train; the rest stays
    assert len(dm.splits["train"]) == 120 - 3 * (12 + 8)
    # a random carve (the default) holds out phrases too
    plain = text_dm(tokenizer, tmp_path / "plain", train_file=str(csv), val_fraction=0.1)
    plain.setup()
    assert any(len(t.split()) < 4 for t in plain.splits["val"]["text"])


def test_carve_whole_texts_too_large_a_fraction_is_named(tokenizer, tmp_path) -> None:
    csv = phrase_data(tmp_path)
    dm = text_dm(tokenizer, tmp_path, train_file=str(csv), val_fraction=0.5, carve_whole_texts=True)
    with pytest.raises(
        DataError, match="carve_whole_texts: 0.5 of 120 examples is 60, but only 40"
    ):
        dm.setup()


def test_jpegs_decode_with_torchvision_others_with_pil(tiny_images, tmp_path) -> None:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from src.data.image import build_transforms, rgb_loader

    jpg = next(tiny_images.rglob("*.jpg"))
    gif = next(tiny_images.rglob("*.gif"))
    decoded = rgb_loader(str(jpg))
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.uint8
    pil = Image.open(jpg).convert("RGB")
    assert decoded.shape == (3, pil.height, pil.width)
    assert (decoded.int() - pil_to_tensor(pil).int()).abs().max() <= 2
    assert rgb_loader(str(gif)).mode == "RGB"
    # a JPEG torchvision refuses goes to PIL, whose error names the file
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpg.read_bytes()[:40])
    with pytest.raises(DataError, match=f"cannot read image {broken}"):
        rgb_loader(str(broken))
    tf = build_transforms(PRE, False, 0.0)
    assert torch.allclose(tf(decoded), tf(pil), atol=0.05)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"carve_whole_texts": "yes"}, "data.carve_whole_texts='yes': true or false"),
        ({"carve_whole_texts": True, "text_pair_column": "b"}, "not with data.text_pair_column"),
        ({"carve_whole_texts": True, "folds": 5, "fold": 0}, "not with data.folds"),
    ],
)
def test_carve_whole_texts_bad_settings_are_named(tokenizer, tmp_path, extra, needle) -> None:
    from src.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        text_dm(tokenizer, tmp_path, train_file=str(tmp_path / "t.csv"), **extra)
