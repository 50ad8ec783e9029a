"""The frozen-feature cache of feature-extraction runs: cached runs give the uncached run's
metrics, the second run reuses the entry, the key follows model / data / preprocessing, and the
cache stays off (or fails, when demanded) wherever it would change results."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.features import _data_identity, feature_cache_blocker, maybe_cache_features
from src.finetune import check_finetune_config
from src.models.networks import build_network
from tests.conftest import QUIET, read_metrics, run_cli, tiny_text_overrides

LABELS = ["neg", "pos"]
METRICS = ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss")


def assert_same_metrics(cached: dict, uncached: dict) -> None:
    for key in METRICS:
        assert cached[key] == pytest.approx(uncached[key], abs=1e-5), key
    assert cached["val/acc"] == uncached["val/acc"] and cached["test/acc"] == uncached["test/acc"]
    assert cached["best_epoch"] == uncached["best_epoch"]


def train(run_dir: Path, cache: Path, *overrides: str):
    proc = run_cli(
        "src.train",
        *overrides,
        "finetune=feature_extraction",
        "optimizer.lr=1e-2",
        "trainer.max_epochs=3",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(run_dir), proc.stdout + proc.stderr


def image_overrides(root: Path) -> list[str]:
    return [
        "task=image_folder",
        "model=resnet18",
        "model.weights=null",
        "model.image_size=32",
        f"data.root={root}",
        "data.augment=false",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.precision=32-true",
    ]


# --------------------------------------------------------------------------- exact, and reused


def test_text_cached_matches_uncached_and_reuses_entry(tiny_bert, tiny_text_data, tmp_path) -> None:
    text = tiny_text_overrides(tiny_bert, tiny_text_data)
    cache = tmp_path / "cache"
    uncached, log = train(tmp_path / "off", cache, *text, "finetune.feature_cache=false")
    assert "feature cache off: finetune.feature_cache=false" in log
    assert not (cache / "features").exists()

    first, log = train(tmp_path / "on", cache, *text)
    assert "feature cache on" in log and "feature cache miss" in log
    assert_same_metrics(first, uncached)
    (entry,) = (cache / "features").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "test.pt", "train.pt", "val.pt"]

    again, log = train(tmp_path / "again", cache, *text)
    assert "feature cache hit" in log and "feature cache miss" not in log
    assert_same_metrics(again, uncached)

    # another max_length: other token ids, another entry
    train(tmp_path / "short", cache, *text, "data.max_length=4")
    assert len(list((cache / "features").iterdir())) == 2


def test_image_cached_matches_uncached_and_checkpoint_predicts(tiny_images, tmp_path) -> None:
    from src.saved_run import load_run

    cache = tmp_path / "cache"
    images = image_overrides(tiny_images)
    uncached, _ = train(tmp_path / "off", cache, *images, "finetune.feature_cache=false")
    cached, log = train(tmp_path / "on", cache, *images)
    assert "feature cache miss" in log
    assert_same_metrics(cached, uncached)

    # the checkpoint holds the whole network: it predicts from pixels, as an uncached one does
    on, off = load_run(cached["best_ckpt_path"]), load_run(uncached["best_ckpt_path"])
    pixels = {"pixel_values": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        assert torch.allclose(on.module(pixels), off.module(pixels), atol=1e-5)


# --------------------------------------------------------------------------- when it is off


def run_cfg(strategy: str = "feature_extraction", **finetune) -> OmegaConf:
    return OmegaConf.create(
        {"finetune": {"strategy": strategy, **finetune}, "trainer": {}, "paths": {"cache_dir": "x"}}
    )


def cnn():
    cfg = {"name": "r", "family": "torchvision", "arch": "resnet18", "weights": None}
    return build_network(OmegaConf.create(cfg), LABELS)


@pytest.mark.parametrize(
    "strategy,finetune,augment,needle",
    [
        ("feature_extraction", {}, True, "data.augment=true"),
        ("feature_extraction", {"feature_cache": False}, False, "feature_cache=false"),
        ("full", {}, False, "finetune=full trains backbone groups"),
        ("partial", {"trainable_groups": 1}, False, "finetune=partial trains"),
        ("gradual", {"unfreeze_every": 1}, False, "finetune=gradual trains"),
        ("lora", {}, False, "finetune=lora trains"),
    ],
)
def test_auto_is_off_where_it_would_change_results(strategy, finetune, augment, needle) -> None:
    data = SimpleNamespace(augment=augment)
    assert needle in feature_cache_blocker(run_cfg(strategy, **finetune), data, cnn())


def test_auto_is_on_for_frozen_backbone_and_fixed_transform() -> None:
    assert feature_cache_blocker(run_cfg(), SimpleNamespace(augment=False), cnn()) is None


def test_demanding_the_cache_with_augmentation_is_one_line_error(tiny_images) -> None:
    from src.data.image import ImageDataModule
    from src.models.networks import ImagePreprocessing

    pre = ImagePreprocessing(36, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    data = ImageDataModule(pre, str(tiny_images), augment=True, num_workers=0)
    data.setup("fit")
    module = SimpleNamespace(network=cnn())
    with pytest.raises(ConfigError, match=r"feature_cache=true, but .*data.augment=true"):
        maybe_cache_features(run_cfg(feature_cache=True), data, module)
    data.augment = False
    wrapped = maybe_cache_features(run_cfg(feature_cache=True), data, module)
    assert wrapped is not data and wrapped.label_names == data.label_names


def test_demanding_the_cache_with_trainable_groups_fails_early() -> None:
    with pytest.raises(ConfigError, match="feature_cache=true needs finetune=feature_extraction"):
        check_finetune_config(
            run_cfg("partial", trainable_groups=1, feature_cache=True).finetune, "image"
        )
    with pytest.raises(ConfigError, match="feature_cache='sometimes'"):
        check_finetune_config(run_cfg(feature_cache="sometimes").finetune, "image")


# --------------------------------------------------------------------------- the key


def test_key_follows_data_preprocessing_and_weights(tiny_bert, tiny_text_data, tmp_path) -> None:
    from src.data.text import TextDataModule
    from src.models.networks import load_tokenizer

    tok = load_tokenizer(OmegaConf.create({"pretrained": str(tiny_bert)}))

    def identity(**kw):
        files = {"train_file": str(tiny_text_data / "train.csv"), "test_file": None}
        dm = TextDataModule(tok, **files, cache_dir=str(tmp_path / "tok"), **kw)
        dm.setup("fit")
        return _data_identity(dm)

    base = identity()
    assert identity() == base
    assert identity(max_length=4) != base
    assert identity(val_fraction=0.3) != base
    assert identity(folds=4, fold=1) != identity(folds=4, fold=2)

    net = cnn()
    digest = net.frozen_state_digest()
    with torch.no_grad():
        net.model.fc.weight.add_(1.0)  # the head: not part of the features
    assert net.frozen_state_digest() == digest
    with torch.no_grad():
        net.model.layer1[0].conv1.weight.add_(1.0)
    assert net.frozen_state_digest() != digest


# --------------------------------------------------------------------------- the network split


@pytest.mark.parametrize(
    "arch", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"]
)
def test_cnn_head_on_features_is_forward(arch) -> None:
    cfg = {"name": arch, "family": "torchvision", "arch": arch, "weights": None}
    net = build_network(OmegaConf.create(cfg), LABELS).eval()
    batch = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    assert net.feature_cache_blocker() is None
    with torch.no_grad():
        assert torch.equal(net({"features": net.features(batch)}), net(batch))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_text_head_on_features_is_forward(model_type) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from src.models.networks import HFTextNetwork

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
    if model_type == "electra":
        sizes["embedding_size"] = 16  # embeddings_project (in the embeddings group) maps 16 -> 32
    config = AutoConfig.for_model(model_type, vocab_size=40, max_position_embeddings=32, **sizes)
    torch.manual_seed(0)
    net = HFTextNetwork(AutoModelForSequenceClassification.from_config(config)).eval()
    ids = torch.randint(5, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(3, dtype=torch.long)}
    assert net.feature_cache_blocker() is None
    with torch.no_grad():
        assert torch.allclose(net({"features": net.features(batch)}), net(batch), atol=1e-6)


def test_parameters_outside_groups_and_head_block_the_cache() -> None:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    from src.models.networks import HFTextNetwork

    config = ElectraConfig(
        vocab_size=40, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    net = HFTextNetwork(ElectraForSequenceClassification(config))
    assert net.feature_cache_blocker() is None  # embeddings_project is in the embeddings group
    net.model.electra.scale = torch.nn.Parameter(torch.ones(1))  # in no group nor the head
    assert "model.electra.scale" in net.feature_cache_blocker()
