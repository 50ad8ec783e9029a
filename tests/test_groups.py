"""Declared, checked layer groups: patterns cover every parameter exactly once (a planted loose
parameter fails the build), the new backbones (ViT-B/16, DistilBERT, RoBERTa, DeBERTa-v2) on
tiny random configs, and finetune.trainable / finetune.frozen by group name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.errors import ConfigError, ModelUnavailableError
from src.finetune import check_finetune_config, finetune_callbacks, prepare_network
from src.models.groups import LayerGroupError, declared_groups
from src.models.networks import HFTextNetwork, TorchvisionNetwork, build_network
from src.models.vision import load_torchvision_weights, replace_head
from src.optim import discriminative_param_groups
from tests.conftest import ROOT
from tests.test_finetune import (
    BERT_TOP_DOWN,
    LABELS,
    LR,
    ImageData,
    Probe,
    TokenData,
    bert,
    classifier,
    finetune_cfg,
    fit,
    lora_cfg,
)
from tests.test_networks import check_groups_partition


def group_of(network) -> dict[str, str]:
    """parameter name -> its group (head parameters: "head")."""
    ids = {id(p): name for name, params in network.group_parameters() for _, p in params}
    head = {id(p) for p in network.head_parameters()}
    return {
        n: ids.get(id(p), "head" if id(p) in head else "?") for n, p in network.named_parameters()
    }


# --------------------------------------------------------------------------- the coverage check


def resnet():
    cfg = {"name": "resnet18", "family": "torchvision", "arch": "resnet18", "weights": None}
    return build_network(OmegaConf.create(cfg), LABELS)


def test_a_loose_parameter_fails_the_check_naming_it() -> None:
    net = resnet()
    net.model.layer4.scale = nn.Parameter(torch.ones(1))  # inside layer4: covered
    net.model.temperature = nn.Parameter(torch.ones(1))  # on the model itself: in no group
    with pytest.raises(LayerGroupError) as e:
        net.check_groups()
    message = str(e.value)
    assert "\n" not in message
    assert "1 in no layer group nor the head: model.temperature" in message
    assert "model.layer4.scale" not in message
    assert "model.temperature" in net.feature_cache_blocker()


def test_a_parameter_in_two_groups_or_a_group_and_the_head_fails() -> None:
    module = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2), "fc": nn.Linear(2, 2)})
    overlapping = [("low", r"a\."), ("all", r"(?:a|b)\."), ("top", r"fc\.")]
    with pytest.raises(LayerGroupError, match=r"2 in more than one: a\.weight \(all \+ low\)"):
        declared_groups(module, overlapping, head=[])
    with pytest.raises(LayerGroupError, match=r"fc\.bias \(head \+ top\)"):
        declared_groups(module, overlapping[1:], head=[module["fc"]])
    groups = declared_groups(module, [("block{}", r"(a|b)\.")], head=[module["fc"]])
    assert [(g, [n for n, _ in ps]) for g, ps in groups] == [
        ("blocka", ["a.weight", "a.bias"]),
        ("blockb", ["b.weight", "b.bias"]),
    ]


def test_groups_are_ordered_by_declaration_then_number() -> None:
    layers = nn.ModuleList(nn.Linear(1, 1) for _ in range(12))
    module = nn.ModuleDict({"layers": layers, "emb": nn.Embedding(3, 1)})
    groups = declared_groups(module, [("emb", r"emb\."), ("layer{}", r"layers\.(\d+)\.")], [])
    assert [g for g, _ in groups] == ["emb", *(f"layer{i}" for i in range(12))]


# --------------------------------------------------------------------------- ViT-B/16


def tiny_vit(image_size: int = 32):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=image_size, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    replace_head(model, "vit_b_16", len(LABELS), None)
    return TorchvisionNetwork(model, "vit_b_16").check_groups()


def test_vit_groups_hold_class_token_and_position_table() -> None:
    net = tiny_vit()
    assert net.group_names() == ["embeddings", "layer0", "layer1", "norm"]
    check_groups_partition(net)  # the bare parameters too, through the group's modules
    groups = group_of(net)
    assert groups["model.class_token"] == groups["model.encoder.pos_embedding"] == "embeddings"
    assert groups["model.conv_proj.weight"] == "embeddings"
    assert groups["model.encoder.ln.weight"] == "norm"
    assert {g for n, g in groups.items() if n.startswith("model.heads.")} == {"head"}
    assert "?" not in groups.values()
    # discriminative LRs reach the class token at the embeddings' LR (it used to train as head)
    param_groups = discriminative_param_groups(net, lr=1.0, lr_decay=0.5, weight_decay=0.0)
    by_param = {id(p): g["lr"] for g in param_groups for p in g["params"]}
    assert by_param[id(net.model.class_token)] == pytest.approx(0.5**4)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32)}
    net.eval()
    with torch.no_grad():
        assert net(batch).shape == (2, 2)
        assert torch.equal(net({"features": net.features(batch)}), net(batch))


def test_vit_feature_extraction_freezes_class_token(tmp_path) -> None:
    net = tiny_vit()
    cfg = finetune_cfg("feature_extraction")
    before = net.model.class_token.detach().clone()
    probe = Probe()
    fit(classifier(prepare_network(net, cfg)), ImageData(), [*finetune_callbacks(cfg), probe],
        tmp_path, epochs=1)  # fmt: skip
    assert probe.trainable[0] == {"head"}
    assert not net.model.class_token.requires_grad
    assert torch.equal(net.model.class_token, before)


def test_vit_weights_for_another_size_are_interpolated() -> None:
    small, large = tiny_vit(32), tiny_vit(64)
    load_torchvision_weights(large.model, small.model.state_dict())
    assert large.model.encoder.pos_embedding.shape == (1, 17, 32)
    assert torch.equal(large.model.class_token, small.model.class_token)


def test_vit_b_16_builds_from_config() -> None:
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "vit_b_16.yaml")
    cfg.weights, cfg.image_size = None, 32
    net = build_network(cfg, ["a", "b", "c"])
    assert net.group_names() == ["embeddings", *(f"layer{i}" for i in range(12)), "norm"]
    assert net({"pixel_values": torch.randn(1, 3, 32, 32)}).shape == (1, 3)
    cfg.dropout = 0.2
    with pytest.raises(ConfigError, match="vit_b_16's head has no dropout layer"):
        build_network(cfg, ["a", "b"])


# --------------------------------------------------------------------------- text encoders


SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY = {
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "roberta": {**SIZES, "intermediate_size": 64},
    # relative attention with its own LayerNorm and the convolution after layer 0: the extras
    "deberta-v2": {
        **SIZES,
        "intermediate_size": 64,
        "relative_attention": True,
        "position_buckets": 8,
        "norm_rel_ebd": "layer_norm",
        "pos_att_type": ["p2c", "c2p"],
        "conv_kernel_size": 3,
    },
}
GROUPS = {
    "distilbert": ["embeddings", "layer0", "layer1"],
    "roberta": ["embeddings", "layer0", "layer1"],
    "deberta-v2": ["embeddings", "layer0", "layer1"],
}


def tiny_encoder_dir(model_type: str, root: Path) -> Path:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(
        model_type, vocab_size=40, max_position_embeddings=32, **TINY[model_type]
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(root)
    return root


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_text_encoder_groups_cover_everything(model_type, tmp_path) -> None:
    path = tiny_encoder_dir(model_type, tmp_path / model_type)
    cfg = OmegaConf.create({"name": model_type, "family": "hf", "pretrained": str(path)})
    net = build_network(cfg, LABELS)
    assert net.group_names() == GROUPS[model_type]
    check_groups_partition(net)
    groups = group_of(net)
    assert "?" not in groups.values()
    if model_type == "deberta-v2":
        base = "model.deberta.encoder."
        assert groups[base + "rel_embeddings.weight"] == "embeddings"
        assert groups[base + "LayerNorm.weight"] == "embeddings"
        assert groups[base + "conv.conv.weight"] == "layer0"
        assert groups["model.pooler.dense.weight"] == "head"  # ContextPooler: new, as the head
    ids = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    net.eval()
    assert net.feature_cache_blocker() is None
    with torch.no_grad():
        assert torch.allclose(net({"features": net.features(batch)}), net(batch), atol=1e-6)


def test_deberta_mean_pooling_runs_its_head_apart(tmp_path) -> None:
    path = tiny_encoder_dir("deberta-v2", tmp_path / "deberta")
    cfg = OmegaConf.create(
        {"name": "deberta", "family": "hf", "pretrained": str(path), "pooling": "mean"}
    )
    net = build_network(cfg, LABELS)
    assert isinstance(net, HFTextNetwork) and net.pooling == "mean" and not net.own_pooling


@pytest.mark.parametrize("name", ["distilbert", "roberta", "deberta_v2"])
def test_hub_encoders_offline_say_what_to_do(name, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import: without this the hub is tried (and retried for ~90 s) with no network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / "bert.yaml"), cfg)
    with pytest.raises(ModelUnavailableError) as e:
        build_network(cfg, LABELS)
    assert f"model.pretrained={cfg.pretrained!r}" in str(e.value) and "local" in str(e.value)


# --------------------------------------------------------------------------- groups by name


@pytest.mark.parametrize(
    "strategy,values,expected",
    [
        ("full", {"trainable": ["layer1", "pooler"]}, [["pooler", "layer1"]] * 2),
        ("full", {"frozen": ["embeddings"]}, [["pooler", "layer1", "layer0"]] * 2),
        ("partial", {"trainable": ["embeddings", "layer0"]}, [["embeddings", "layer0"]] * 2),
        ("partial", {"trainable_groups": 3, "frozen": ["layer?"]}, [["pooler"]] * 2),
        # gradual skips the frozen group: pooler + layer1, then embeddings
        (
            "gradual",
            {"unfreeze_every": 1, "groups_per_step": 2, "frozen": ["layer0"]},
            [[], ["pooler", "layer1"], ["pooler", "layer1", "embeddings"]],
        ),
        (
            "gradual",
            {"unfreeze_at": [1], "trainable": ["embeddings"]},
            [["embeddings"], ["embeddings", "pooler"]],
        ),  # fmt: skip
    ],
)
def test_trainable_and_frozen_by_name(tiny_bert, tmp_path, strategy, values, expected) -> None:
    cfg = finetune_cfg(strategy, lr_decay=0.5, **values)
    module = classifier(prepare_network(bert(tiny_bert), cfg), lr_decay=0.5)
    probe = Probe()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=len(expected))
    depth = {"head": 0, **{name: d for d, name in enumerate(BERT_TOP_DOWN, start=1)}}
    for epoch, names in enumerate(expected):
        assert probe.trainable[epoch] == {"head", *names}, epoch
        assert probe.optimized[epoch] == {"head", *names}, epoch
    # each group keeps its discriminative LR (its depth in the model, not in the selection)
    last = probe.lrs[max(probe.lrs)]
    assert {n.split("/")[0] for n in last} == {"head", *expected[-1]}
    for name, lr in last.items():
        assert lr == pytest.approx(LR * 0.5 ** depth[name.split("/")[0]]), name


def test_lora_trains_adapters_of_the_named_groups_only(tiny_bert) -> None:
    network = prepare_network(bert(tiny_bert), lora_cfg(trainable=["layer1"]))
    schedule = finetune_callbacks(lora_cfg(trainable=["layer1"]))[0]
    schedule.freeze_before_training(classifier(network))
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n and "lora_" in n or ".classifier." in n
                             for n in trainable)  # fmt: skip
    assert any(".layer.1." in n for n in trainable)


@pytest.mark.parametrize(
    "values,message",
    [
        (
            {"frozen": ["layer9"]},
            "finetune.frozen has 'layer9', not a layer group of this model; valid: embeddings, "
            "layer0, layer1, pooler",
        ),
        ({"trainable": ["encoder*"]}, "finetune.trainable has 'encoder*'"),
        ({"trainable": ["head"]}, "the head always trains"),
        (
            {"trainable": ["layer*"], "frozen": ["layer1"]},
            "finetune.trainable and finetune.frozen both name layer1",
        ),
    ],
)
def test_bad_group_names_are_one_line_listing_the_groups(tiny_bert, values, message) -> None:
    with pytest.raises(ConfigError) as e:
        prepare_network(bert(tiny_bert), finetune_cfg("full", **values))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"strategy": "full", "frozen": "embeddings"}, "finetune.frozen='embeddings' is invalid"),
        ({"strategy": "full", "trainable": [1]}, "must be a list of layer group names"),
        (
            {"strategy": "feature_extraction", "trainable": ["pooler"]},
            "use finetune=partial finetune.trainable=[...]",
        ),
    ],
)
def test_bad_group_lists_fail_before_the_model(values, message) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        check_finetune_config(OmegaConf.create(values), "text")
    assert message in str(e.value)
