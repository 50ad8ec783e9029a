"""Fine-tuning strategies on tiny models built in the test: freezing per epoch, frozen BatchNorm,
per-group LRs under every schedule, resuming mid-way through gradual unfreezing, LoRA, the CLI."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from src.errors import ConfigError
from src.finetune import check_finetune_config, finetune_callbacks, prepare_network
from src.models.classifier import Classifier
from src.models.networks import build_network
from tests.conftest import QUIET, run_cli, tiny_text_overrides

LABELS = ["neg", "pos"]
LR = 1e-2


# --------------------------------------------------------------------------- helpers


class TokenData(Dataset):
    """Random token ids; the label is the parity of the first token."""

    def __init__(self, n: int = 24, length: int = 8, vocab: int = 31) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[0] % 2}


class ImageData(Dataset):
    def __init__(self, n: int = 16, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": torch.tensor(i % 2)}


def bert(tiny_bert: Path):
    """groups: embeddings, layer0, layer1, pooler."""
    cfg = OmegaConf.create({"name": "bert", "family": "hf", "pretrained": str(tiny_bert)})
    return build_network(cfg, LABELS)


def cnn(arch: str = "resnet18"):
    cfg = OmegaConf.create({"name": arch, "family": "torchvision", "arch": arch, "weights": None})
    return build_network(cfg, LABELS)


def finetune_cfg(strategy: str, **values):
    return OmegaConf.create({"strategy": strategy, "lr_decay": 1.0, **values})


def classifier(network, lr_decay: float = 1.0, scheduler: dict | None = None) -> Classifier:
    return Classifier(
        network=network,
        label_names=LABELS,
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.01),
        scheduler=scheduler or {"name": "constant", "warmup": 0},
        lr_decay=lr_decay,
    )


def fit(
    module, data: Dataset, callbacks: list[Callback], tmp_path: Path, epochs: int, **kwargs
) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        deterministic=True,
    )
    L.seed_everything(0, verbose=False)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=8), **kwargs)
    return trainer


class Probe(Callback):
    """Records, after the freeze schedule ran: trainable groups per epoch, group LRs per step."""

    def __init__(self) -> None:
        self.trainable: dict[int, set[str]] = {}
        self.optimized: dict[int, set[str]] = {}
        self.lrs: dict[int, dict[str, float]] = {}
        self.bn_training: list[bool] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.trainable[trainer.current_epoch] = trainable_groups(module.network)
        self.optimized[trainer.current_epoch] = optimized_groups(
            module.network, trainer.optimizers[0]
        )

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs[trainer.global_step] = {g["name"]: g["lr"] for g in groups}


def trainable_groups(network) -> set[str]:
    """Names of the layer groups (and `head`) whose parameters all train; fails on a mixed group."""
    out = set()
    groups = [*network.layer_groups(), ("head", tuple(network.head_modules()))]
    for name, modules in groups:
        flags = {p.requires_grad for m in modules for p in m.parameters()}
        assert len(flags) == 1, f"group {name} is partly frozen"
        if flags == {True}:
            out.add(name)
    return out


def optimized_groups(network, optimizer) -> set[str]:
    """Names of the layer groups whose parameters are all in the optimizer."""
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    groups = [*network.layer_groups(), ("head", tuple(network.head_modules()))]
    out = set()
    for name, modules in groups:
        ids = {id(p) for m in modules for p in m.parameters()}
        if ids <= in_opt:
            out.add(name)
        else:
            assert not ids & in_opt, f"group {name} is partly in the optimizer"
    return out


# --------------------------------------------------------------------------- which groups train


BERT_TOP_DOWN = ["pooler", "layer1", "layer0", "embeddings"]
RESNET_TOP_DOWN = ["layer4", "layer3", "layer2", "layer1", "stem"]


def top(order: list[str], k: int) -> set[str]:
    return {"head", *order[:k]}


@pytest.mark.parametrize(
    "strategy,values,expected",
    [
        ("full", {}, [4, 4, 4]),
        ("feature_extraction", {}, [0, 0, 0]),
        ("partial", {"trainable_groups": 2}, [2, 2, 2]),
        ("gradual", {"unfreeze_at": [1, 2]}, [0, 1, 2]),
        ("gradual", {"unfreeze_every": 1, "groups_per_step": 2}, [0, 2, 4]),
    ],
)
def test_bert_trainable_groups_per_epoch(tiny_bert, tmp_path, strategy, values, expected) -> None:
    cfg = finetune_cfg(strategy, **values)
    module = classifier(prepare_network(bert(tiny_bert), cfg))
    probe = Probe()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=3)
    for epoch, k in enumerate(expected):
        assert probe.trainable[epoch] == top(BERT_TOP_DOWN, k), epoch
        # exactly the trainable groups are in the optimizer
        assert probe.optimized[epoch] == top(BERT_TOP_DOWN, k), epoch


@pytest.mark.parametrize(
    "strategy,values,expected",
    [
        ("feature_extraction", {}, [0, 0]),
        ("partial", {"trainable_groups": 1}, [1, 1]),
        ("gradual", {"unfreeze_at": [1]}, [0, 1]),
        ("full", {}, [5, 5]),
    ],
)
def test_cnn_trainable_groups_per_epoch(tmp_path, strategy, values, expected) -> None:
    cfg = finetune_cfg(strategy, **values)
    module = classifier(prepare_network(cnn("resnet18"), cfg))
    probe = Probe()
    fit(module, ImageData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=2)
    for epoch, k in enumerate(expected):
        assert probe.trainable[epoch] == top(RESNET_TOP_DOWN, k), epoch
        assert probe.optimized[epoch] == top(RESNET_TOP_DOWN, k), epoch


# --------------------------------------------------------------------------- frozen BatchNorm


def bn_state(modules) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": t.clone()
        for i, m in enumerate(modules)
        for name, t in m.state_dict().items()
        if "running" in name or "num_batches" in name
    }


class BatchNormModes(Callback):
    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        net = module.network
        self.modes.append(
            {
                name: all(
                    sub.training for m in mods for sub in m.modules() if isinstance(sub, _BatchNorm)
                )
                for name, mods in net.layer_groups()
            }
        )


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_frozen_batchnorm_keeps_running_stats(tmp_path, arch) -> None:
    cfg = finetune_cfg("partial", trainable_groups=1)
    network = prepare_network(cnn(arch), cfg)
    groups = dict(network.layer_groups())
    top_name = network.layer_groups()[-1][0]
    frozen_before = {n: bn_state(mods) for n, mods in groups.items() if n != top_name}
    top_before = bn_state(groups[top_name])
    head_before = [p.clone() for p in network.head_parameters()]
    modes = BatchNormModes()
    fit(classifier(network), ImageData(), [*finetune_callbacks(cfg), modes], tmp_path, epochs=2)

    for name, before in frozen_before.items():
        after = bn_state(groups[name])
        assert before, name
        for key, value in before.items():
            assert torch.equal(value, after[key]), f"{name}.{key} changed"
    # the trainable top group's BatchNorm did update (so the check above can fail)
    after = bn_state(groups[top_name])
    assert any(not torch.equal(v, after[k]) for k, v in top_before.items())
    assert any(
        not torch.equal(a, b) for a, b in zip(head_before, network.head_parameters(), strict=True)
    )
    # during every training step: frozen BatchNorm in eval mode, trainable BatchNorm in train mode
    assert len(modes.modes) == 4
    for step in modes.modes:
        assert step[top_name] is True
        assert not any(v for n, v in step.items() if n != top_name)


# --------------------------------------------------------------------------- learning rates


def multiplier(name: str, step: int, warmup: int, total: int) -> float:
    """The schedules written out independently of src.optim."""
    if name == "one_cycle":
        p = step / warmup if step < warmup else 1 - (step - warmup) / (total - warmup)
        return (1 + p * 31) / 32
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {
        "constant": 1.0,
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
    }[name]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "one_cycle"])
@pytest.mark.parametrize("lr_decay", [1.0, 0.5])
def test_lr_of_every_group_at_every_step(tiny_bert, tmp_path, schedule, lr_decay) -> None:
    cfg = finetune_cfg("full", lr_decay=lr_decay)
    module = classifier(
        prepare_network(bert(tiny_bert), cfg), lr_decay, {"name": schedule, "warmup": 2}
    )
    probe = Probe()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=2)
    total = 6  # 24 examples / batch 8 * 2 epochs
    assert sorted(probe.lrs) == list(range(total))
    depth = {"head": 0, **{name: d for d, name in enumerate(BERT_TOP_DOWN, start=1)}}
    for step, lrs in probe.lrs.items():
        # every group with and without weight decay
        assert set(lrs) == {n for g in depth for n in (g, f"{g}/no_decay")}
        for name, lr in lrs.items():
            expected = (
                LR * lr_decay ** depth[name.split("/")[0]] * multiplier(schedule, step, 2, total)
            )
            assert lr == pytest.approx(expected, rel=1e-6, abs=1e-12), (step, name)


@pytest.mark.parametrize("schedule", ["linear", "one_cycle"])
def test_late_group_follows_the_schedule(tiny_bert, tmp_path, schedule) -> None:
    """A group unfrozen at epoch 1 joins at its discriminative LR times the schedule's value there."""
    cfg = finetune_cfg("gradual", unfreeze_at=[1, 2], lr_decay=0.5)
    module = classifier(prepare_network(bert(tiny_bert), cfg), 0.5, {"name": schedule, "warmup": 2})
    probe = Probe()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=3)
    total = 9
    assert set(probe.lrs[0]) == {"head", "head/no_decay"}
    assert set(probe.lrs[3]) == {"head", "head/no_decay", "pooler", "pooler/no_decay"}
    assert set(probe.lrs[6]) == set(probe.lrs[3]) | {"layer1", "layer1/no_decay"}
    for step in range(3, total):
        m = multiplier(schedule, step, 2, total)
        assert probe.lrs[step]["head"] == pytest.approx(LR * m)
        assert probe.lrs[step]["pooler"] == pytest.approx(LR * 0.5 * m)
        if step >= 6:
            assert probe.lrs[step]["layer1/no_decay"] == pytest.approx(LR * 0.25 * m)


# --------------------------------------------------------------------------- resume


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class Snapshot(Callback):
    """The freeze / optimizer / scheduler state when training starts (after any restore) and ends."""

    def __init__(self) -> None:
        self.at: dict[str, dict] = {}

    def _take(self, trainer, module) -> dict:
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        names = {id(p): n for n, p in module.named_parameters()}
        return {
            "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
            "groups": [
                ({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]])
                for g in optimizer.param_groups
            ],
            "exp_avg": {
                names[id(p)]: optimizer.state[p]["exp_avg"].clone()
                for g in optimizer.param_groups
                for p in g["params"]
                if p in optimizer.state
            },
            "scheduler": (
                scheduler.last_epoch,
                list(scheduler.base_lrs),
                len(scheduler.lr_lambdas),
            ),
            "global_step": trainer.global_step,
        }

    def on_train_start(self, trainer, module) -> None:
        self.at["start"] = self._take(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.at["end"] = self._take(trainer, module)


def test_resume_mid_gradual_restores_state_and_param_groups(tiny_bert, tmp_path) -> None:
    cfg = finetune_cfg("gradual", unfreeze_at=[1, 2], lr_decay=0.5)
    sched = {"name": "linear", "warmup": 2}

    def run(*extra: Callback, ckpt_path: str | None = None, root: str = "run"):
        L.seed_everything(0, verbose=False)
        module = classifier(prepare_network(bert(tiny_bert), cfg), 0.5, sched)
        probe, snap = Probe(), Snapshot()
        callbacks = [*finetune_callbacks(cfg), probe, snap, *extra]
        fit(module, TokenData(), callbacks, tmp_path / root, epochs=3, ckpt_path=ckpt_path)
        return probe, snap

    full_probe, _ = run(root="uninterrupted")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _, stopped = run(StopAfter(1), ckpt, root="stopped")
    last = tmp_path / "ckpt" / "last.ckpt"
    assert stopped.at["end"]["global_step"] == 6 and last.is_file()
    resumed_probe, resumed = run(ckpt_path=str(last), root="resumed")

    saved, restored = stopped.at["end"], resumed.at["start"]
    assert restored["global_step"] == 6
    assert restored["requires_grad"] == saved["requires_grad"]
    assert any(restored["requires_grad"][n] for n in restored["requires_grad"] if ".pooler." in n)
    assert not any(
        restored["requires_grad"][n] for n in restored["requires_grad"] if ".layer.1." in n
    )
    assert restored["groups"] == saved["groups"]  # names, LRs, initial_lr, params, in order
    assert restored["scheduler"] == saved["scheduler"]
    assert restored["exp_avg"].keys() == saved["exp_avg"].keys()
    for name, value in saved["exp_avg"].items():
        assert torch.equal(value, restored["exp_avg"][name]), name
    # and the schedule goes on as if never interrupted: layer1 joins at epoch 2, same LRs
    assert resumed_probe.trainable[2] == full_probe.trainable[2] == top(BERT_TOP_DOWN, 2)
    assert resumed_probe.optimized[2] == top(BERT_TOP_DOWN, 2)
    for step in (6, 7, 8):
        assert resumed_probe.lrs[step] == pytest.approx(full_probe.lrs[step]), step


# --------------------------------------------------------------------------- LoRA


def lora_cfg(**values):
    base = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}
    return finetune_cfg("lora", **{**base, **values})


def test_lora_trains_only_adapters_and_head(tiny_bert, tmp_path) -> None:
    from src.saved_run import module_from_checkpoint

    cfg = lora_cfg()
    network = prepare_network(bert(tiny_bert), cfg)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    assert all("lora_" in n or n.startswith("model.classifier.") for n in trainable), trainable
    assert {n for n in trainable if "lora_" in n} == {
        n for n, _ in network.named_parameters() if "lora_" in n
    }
    # 2 layers x (query, value) x (A: 4x32, B: 32x4) + classifier (32x2 + 2)
    assert (
        sum(p.numel() for n, p in network.named_parameters() if n in trainable) == 2 * 2 * 256 + 66
    )
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    module = classifier(network)
    fit(module, TokenData(), finetune_callbacks(cfg), tmp_path, epochs=1)
    for name, p in network.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), name
    # a LoRA checkpoint evaluates: eval rebuilds the network with the adapters, keys match
    run_cfg = OmegaConf.create(
        {
            "model": {"name": "bert", "family": "hf", "pretrained": str(tiny_bert)},
            "finetune": OmegaConf.to_container(cfg),
        }
    )
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {"config": OmegaConf.to_container(run_cfg)},
    }
    rebuilt = module_from_checkpoint(ckpt, run_cfg, LABELS)
    batch = TokenData()[0]
    batch = {k: v.unsqueeze(0) for k, v in batch.items()}
    module.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(module(batch), rebuilt(batch))


def test_lora_param_groups_hold_only_trainable(tiny_bert, tmp_path) -> None:
    cfg = lora_cfg(lr_decay=0.5)
    network = prepare_network(bert(tiny_bert), cfg)
    module = classifier(network, 0.5)
    trainer = fit(module, TokenData(), finetune_callbacks(cfg), tmp_path, epochs=1)
    names = {id(p): n for n, p in network.named_parameters()}
    groups = {
        g["name"]: [names[id(p)] for p in g["params"]] for g in trainer.optimizers[0].param_groups
    }
    # adapters live in the layers; the pooler (depth 1) has none, so layer1 is depth 2
    assert set(groups) == {"head", "head/no_decay", "layer0", "layer1"}
    assert all("lora_" in n for g in ("layer0", "layer1") for n in groups[g])
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["layer1"] == pytest.approx(LR * 0.5**2) and lrs["layer0"] == pytest.approx(
        LR * 0.5**3
    )


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "values,modality,message",
    [
        (
            {"strategy": "freeze_all"},
            "text",
            "finetune.strategy='freeze_all'; valid: full, feature_extraction, partial, gradual, lora",
        ),
        (
            {"strategy": "full", "lr_decay": 0},
            "text",
            "finetune.lr_decay=0 is invalid: must be a float > 0",
        ),
        ({"strategy": "full", "lr_decay": -0.8}, "image", "finetune.lr_decay=-0.8 is invalid"),
        (
            {"strategy": "lora", "rank": 8, "alpha": 16, "target_modules": "query"},
            "image",
            "finetune.target_modules='query' must be auto or a non-empty list",
        ),
        (
            {"strategy": "partial", "trainable_groups": -1},
            "image",
            "finetune.trainable_groups=-1 is invalid",
        ),
        (
            {"strategy": "gradual", "unfreeze_at": [], "unfreeze_every": None},
            "text",
            "finetune.unfreeze_at=[]",
        ),
        (
            {"strategy": "gradual", "unfreeze_at": None, "unfreeze_every": 0},
            "text",
            "finetune.unfreeze_every=0 is invalid",
        ),
    ],
)
def test_bad_finetune_config_is_one_line(values, modality, message) -> None:
    with pytest.raises(ConfigError) as err:
        check_finetune_config(OmegaConf.create(values), modality)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_trainable_groups_beyond_the_model_names_the_range() -> None:
    with pytest.raises(
        ConfigError,
        match=r"trainable_groups=6 is beyond this model's 5 layer groups .* valid: 0\.\.5",
    ):
        prepare_network(cnn("resnet18"), finetune_cfg("partial", trainable_groups=6))
    prepare_network(cnn("resnet18"), finetune_cfg("partial", trainable_groups=5))


def test_lora_auto_targets_follow_the_architecture(tiny_bert) -> None:
    """target_modules=auto: BERT's query/value, a CNN's ungrouped convolutions (MobileNet's
    depthwise ones left out), ViT's attention modules; never the head."""
    from src.lora import resolve_targets
    from tests.test_groups import tiny_vit

    assert [t.rsplit(".", 1)[-1] for t in resolve_targets(bert(tiny_bert), "auto")] == [
        "query",
        "value",
    ] * 2
    resnet = resolve_targets(cnn("resnet18"), "auto")
    assert len(resnet) == 20 and "conv1" in resnet and "layer4.1.conv2" in resnet  # + downsample
    assert "fc" not in resnet
    mobilenet = cnn("mobilenet_v2")
    targets = resolve_targets(mobilenet, "auto")
    modules = dict(mobilenet.model.named_modules())
    assert targets and all(modules[t].groups == 1 for t in targets)
    assert any(m.groups > 1 for m in modules.values() if isinstance(m, torch.nn.Conv2d))
    assert resolve_targets(tiny_vit(), "auto") == [
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention",
    ]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_lora_on_a_cnn_trains_adapters_and_head_and_reloads(arch, tmp_path) -> None:
    from src.saved_run import module_from_checkpoint

    cfg = lora_cfg(target_modules="auto")
    network = prepare_network(cnn(arch), cfg)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    head = {n for n, _ in network.named_parameters() if n.startswith("model.fc.")} | {
        n for n, _ in network.named_parameters() if n.startswith("model.classifier.")
    }
    assert trainable == {n for n, _ in network.named_parameters() if "lora_" in n} | head
    assert any("lora_" in n for n in trainable) and head
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    module = classifier(network)
    fit(module, ImageData(), finetune_callbacks(cfg), tmp_path, epochs=1)
    changed = {n for n, p in network.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)  # B starts at zero: it moved, the adapter works
    run_cfg = OmegaConf.create(
        {
            "model": {"name": arch, "family": "torchvision", "arch": arch, "weights": None},
            "finetune": OmegaConf.to_container(cfg),
        }
    )
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {"config": OmegaConf.to_container(run_cfg)},
    }
    rebuilt = module_from_checkpoint(ckpt, run_cfg, LABELS).eval()
    batch = {"pixel_values": ImageData()[0]["pixel_values"].unsqueeze(0)}
    with torch.no_grad():
        assert torch.allclose(module.eval()(batch), rebuilt(batch), atol=1e-6)


def test_lora_on_vit_adapts_attention_and_changes_its_output(tmp_path) -> None:
    """peft wraps each nn.MultiheadAttention (in- and out-projection); a change to the adapters
    changes the logits (an adapter torch's attention skipped would not)."""
    from tests.test_groups import tiny_vit

    network = prepare_network(tiny_vit(), lora_cfg(target_modules="auto"))
    lora = [p for n, p in network.named_parameters() if "lora_B" in n]
    assert lora and all(p.requires_grad for p in lora)
    x = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    network.eval()
    with torch.no_grad():
        before = network(x)
        for p in lora:
            p.add_(0.5)
        assert not torch.allclose(before, network(x))


@pytest.mark.parametrize(
    "build, target, message",
    [
        ("vit", "out_proj", "out_proj of an nn.MultiheadAttention"),
        ("mobilenet_v2", "features.1.conv.0.0", "a grouped convolution (groups=32)"),
        ("resnet18", "fc", "in the head"),
        ("resnet18", "bn1", "a BatchNorm2d, which LoRA does not adapt"),
        ("resnet18", "qkv", "not a layer of this model"),
    ],
)
def test_lora_targets_that_cannot_work_are_one_line_errors(build, target, message) -> None:
    from tests.test_groups import tiny_vit

    network = tiny_vit() if build == "vit" else cnn(build)
    with pytest.raises(ConfigError) as err:
        prepare_network(network, lora_cfg(target_modules=[target]))
    text = str(err.value)
    assert message in text and "valid: " in text and "\n" not in text, text


def test_lora_names_cnn_layers_by_full_name_not_index(caplog) -> None:
    """torchvision's Sequential stages end their names in indices: 'valid: 0, 1, 2' and an
    'adapters on 0, 1' log would name nothing; the full names do, and they are valid targets."""
    import logging

    with pytest.raises(ConfigError) as err:
        prepare_network(cnn("mobilenet_v2"), lora_cfg(target_modules=["qkv"]))
    valid = str(err.value).split("valid: ")[1].split(", ")
    assert "features.0.0" in valid and "0" not in valid
    with caplog.at_level(logging.INFO, logger="src.lora"):
        prepare_network(cnn("mobilenet_v2"), lora_cfg(target_modules="auto"))
    line = next(r.getMessage() for r in caplog.records if "adapters on" in r.getMessage())
    assert "(features.0.0, features.1.conv.1, " in line and " more);" in line, line


def test_lora_unknown_target_module_lists_linear_layers(tiny_bert) -> None:
    with pytest.raises(ConfigError, match=r"\['qkv'\].*valid: .*query.*value"):
        prepare_network(bert(tiny_bert), lora_cfg(target_modules=["qkv"]))


# --------------------------------------------------------------------------- the CLI


def cli_text_args(tiny_bert: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        *tiny_text_overrides(tiny_bert, data),
        "optimizer.lr=3e-3",
        "trainer.log_every_n_steps=1",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        *extra,
    ]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for file in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_cli_gradual_logs_one_lr_curve_per_group(tiny_bert, tiny_text_data, tmp_path) -> None:
    run_dir = tmp_path / "gradual"
    proc = run_cli(
        "src.train",
        *cli_text_args(
            tiny_bert,
            tiny_text_data,
            run_dir,
            "finetune=gradual",
            "finetune.lr_decay=0.8",
            "finetune.groups_per_step=2",
            "scheduler=linear_warmup",
            "trainer.max_epochs=3",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = scalars(run_dir)
    lr_tags = {t for t in tags if t.startswith("lr-AdamW/")}
    groups = ["head", *BERT_TOP_DOWN]
    assert lr_tags == {f"lr-AdamW/{g}{s}" for g in groups for s in ("", "/no_decay")}
    steps_per_epoch = 15  # 160 rows, a quarter for validation, batch 8
    first = {g: min(step for step, _ in tags[f"lr-AdamW/{g}"]) for g in groups}
    assert first["head"] == 0
    assert steps_per_epoch <= first["pooler"] == first["layer1"] < 2 * steps_per_epoch
    assert 2 * steps_per_epoch <= first["layer0"] == first["embeddings"]
    head = dict(tags["lr-AdamW/head"])
    for depth, g in enumerate(BERT_TOP_DOWN, start=1):
        for step, lr in tags[f"lr-AdamW/{g}"]:
            assert lr == pytest.approx(head[step] * 0.8**depth, rel=1e-5), (g, step)
    trainable = [v for _, v in sorted(tags["params/trainable"])]
    assert trainable == sorted(trainable) and len(set(trainable)) == 3  # grows at epochs 1 and 2


def test_cli_lr_find_saves_plot_and_uses_suggestion(tiny_bert, tiny_text_data, tmp_path) -> None:
    run_dir = tmp_path / "lr_find"
    proc = run_cli(
        "src.train",
        *cli_text_args(
            tiny_bert,
            tiny_text_data,
            run_dir,
            "finetune=partial",
            "finetune.trainable_groups=1",
            "trainer.max_epochs=1",
            "tune.lr_find=true",
            "tune.use_suggestion=true",
            "tune.num_training=30",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "lr_find.png").stat().st_size > 1000
    line = next(line for line in proc.stderr.splitlines() if "lr_find suggests" in line)
    suggested = float(line.split("optimizer.lr=")[1].split()[0])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    used = ckpt["hyper_parameters"]["config"]["optimizer"]["lr"]
    assert used == pytest.approx(suggested, rel=1e-2) and used != pytest.approx(3e-3)
    head = next(g for g in ckpt["optimizer_states"][0]["param_groups"] if g["name"] == "head")
    assert head["initial_lr"] == pytest.approx(used)
