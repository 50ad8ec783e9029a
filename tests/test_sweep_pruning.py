"""The sweep's sampler and pruner: config groups switched from the command line, one-line errors
for a merged spec, Hyperband's resource from the epochs searched, and step numbering (step k after
the k-th epoch; a trial is never cut at its last epoch)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from src.errors import ConfigError
from src.sweep.pruning import build, build_pruner, group_options, resolve_resource
from tests.conftest import run_cli
from tests.test_sweep import load, run_sweep, search_config, sweep_cmd


def _cfg(**trainer):
    return OmegaConf.create({"trainer": {"max_epochs": 3, **trainer}, "cv": {"folds": None}})


def test_hyperband_max_resource_auto_is_the_most_epochs_searched() -> None:
    spec = {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto"}
    space = {"trainer.max_epochs": IntDistribution(1, 4)}
    assert resolve_resource(spec, _cfg(), space)["max_resource"] == 4
    assert resolve_resource(spec, _cfg(), {})["max_resource"] == 3  # not searched: the config's
    choices = {"trainer.max_epochs": CategoricalDistribution([2, 6])}
    assert resolve_resource(spec, _cfg(), choices)["max_resource"] == 6
    # two validations per epoch: twice the steps
    assert resolve_resource(spec, _cfg(val_check_interval=0.5), space)["max_resource"] == 8
    cv = OmegaConf.create({"trainer": {"max_epochs": 3}, "cv": {"folds": 5}})
    assert resolve_resource(spec, cv, space)["max_resource"] == 5  # one report per fold
    fixed = {**spec, "max_resource": 9}
    assert resolve_resource(fixed, _cfg(), space) == fixed
    assert resolve_resource(None, _cfg(), space) is None


def test_a_merged_pruner_spec_is_one_line_naming_the_groups() -> None:
    merged = {
        "_target_": "optuna.pruners.MedianPruner",
        "min_resource": 1,  # left over from hyperband
        "n_warmup_steps": 1,
    }
    with pytest.raises(ConfigError) as e:
        build_pruner(merged)
    message = str(e.value)
    assert "\n" not in message and "min_resource" in message
    assert "hydra/sweeper/pruner=NAME" in message and "hyperband" in message
    with pytest.raises(ConfigError, match="not an optuna sampler"):
        build("sampler", {"_target_": "optuna.pruners.NopPruner"})
    assert {"median", "hyperband", "none"} <= set(group_options("pruner"))
    assert {"tpe", "random"} <= set(group_options("sampler"))
    for name in group_options("pruner"):  # every shipped option builds as it is
        spec = OmegaConf.to_container(OmegaConf.load(f"conf/hydra/sweeper/pruner/{name}.yaml"))
        build_pruner(resolve_resource(spec, _cfg(), {}))
    for name in group_options("sampler"):
        build(
            "sampler",
            OmegaConf.to_container(OmegaConf.load(f"conf/hydra/sweeper/sampler/{name}.yaml")),
        )


@pytest.mark.parametrize(
    "switch, target",
    [
        ([], "optuna.pruners.MedianPruner"),  # sentiment's own choice
        (["hydra/sweeper/pruner=hyperband"], "optuna.pruners.HyperbandPruner"),
        (["hydra/sweeper/pruner=none", "hydra/sweeper/sampler=random"], "optuna.pruners.NopPruner"),
    ],
)
def test_pruner_and_sampler_switch_whole_from_the_command_line(switch, target) -> None:
    proc = run_cli("src.train", "hparams_search=sentiment", *switch, "--cfg", "hydra")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweeper = OmegaConf.create(proc.stdout).hydra.sweeper
    assert sweeper.pruner._target_ == target
    # switched whole: no argument of the shipped median rule is left on another pruner
    if target != "optuna.pruners.MedianPruner":
        assert "n_warmup_steps" not in sweeper.pruner
    if "hydra/sweeper/sampler=random" in switch:
        assert sweeper.sampler._target_ == "optuna.samplers.RandomSampler"
        assert "n_startup_trials" not in sweeper.sampler


def test_target_override_is_a_one_line_error_before_any_trial(tmp_path: Path) -> None:
    proc = run_cli(
        "src.train",
        "-m",
        "hparams_search=sentiment",
        "hydra.sweeper.pruner._target_=optuna.pruners.HyperbandPruner",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: hydra.sweeper.pruner: optuna.pruners.HyperbandPruner(")
    assert "n_warmup_steps" in err[-1]  # the median rule's argument, left over
    assert "hydra/sweeper/pruner=NAME" in err[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep" / "optuna.db").exists()  # nothing was created


def test_a_trial_pruned_at_its_last_epoch_completes(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """ThresholdPruner(lower=1.01) says 'prune' at every report. With warm-up 1 a 2-epoch trial is
    cut after epoch 1 (step 1); a 1-epoch trial trained fully, so it is COMPLETE, not PRUNED."""
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01, "n_warmup_steps": 1}
    params = {"trainer.max_epochs": "choice(1, 2)"}
    grid = {
        "_target_": "optuna.samplers.GridSampler",
        "search_space": {"trainer.max_epochs": [1, 2]},
    }
    search_config(tmp_path, "last", n_trials=2, pruner=pruner, sampler=grid, params=params)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("last", tmp_path, sweep_dir, tiny_bert, tiny_text_data)
    cmd.remove("trainer.max_epochs=4")  # searched here
    run_sweep(cmd)
    by_epochs = {t.params["trainer.max_epochs"]: t for t in load(sweep_dir, "last").get_trials()}
    one, two = by_epochs[1], by_epochs[2]
    assert one.state == TrialState.COMPLETE and sorted(one.intermediate_values) == [1]
    assert two.state == TrialState.PRUNED and sorted(two.intermediate_values) == [1]
    assert (Path(two.user_attrs["run_dir"]) / "metrics.json").is_file()


def test_a_trial_pruned_at_its_last_mid_epoch_validation_completes(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """Two validations an epoch over 15 batches come after batches 7 and 14 (Lightning checks
    every 7 batches), so the last one is not after the epoch's last batch. A cut there saves one
    batch: the trial trained fully and is COMPLETE (ThresholdPruner says 'prune' from step 2)."""
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01, "n_warmup_steps": 2}
    search_config(tmp_path, "lastmid", n_trials=1, pruner=pruner)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("lastmid", tmp_path, sweep_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=1"
    run_sweep([*cmd, "trainer.val_check_interval=0.5"])
    (trial,) = load(sweep_dir, "lastmid").get_trials()
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["epochs_trained"] == round(14 / 15, 3)


def _trainer_at(batch_idx: int, epoch: int, per_epoch_counting: bool = True):
    """A trainer of 2 epochs x 15 batches, validated every 7 batches, just after batch
    `batch_idx` (0-based) of epoch `epoch`."""
    from types import SimpleNamespace

    progress = SimpleNamespace(is_last_batch=batch_idx == 14)
    loop = SimpleNamespace(
        batch_idx=batch_idx, total_batch_idx=epoch * 15 + batch_idx, batch_progress=progress
    )
    return SimpleNamespace(
        max_steps=-1,
        global_step=epoch * 15 + batch_idx + 1,
        max_epochs=2,
        current_epoch=epoch,
        val_check_batch=7,
        num_training_batches=15,
        check_val_every_n_epoch=1 if per_epoch_counting else None,
        fit_loop=SimpleNamespace(epoch_loop=loop),
    )


def test_the_last_validation_is_the_last_check_of_the_fit() -> None:
    """Checks every 7 batches of 15 come after batch indices 6 and 13 of each epoch, or, counted
    over the fit (check_val_every_n_epoch=None), after total indices 6, 13, 20 and 27: only the
    last of them is the last validation."""
    from src.sweep.trial import is_last_validation

    def last(batch_idx: int, epoch: int, per_epoch_counting: bool = True) -> bool:
        return is_last_validation(_trainer_at(batch_idx, epoch, per_epoch_counting))

    assert not last(6, 0) and not last(13, 0) and not last(6, 1)
    assert last(13, 1)  # one batch before the end: no check is left
    assert last(14, 1)  # a check after the epoch's last batch (val_check_interval=1)
    assert not last(5, 1, per_epoch_counting=False)  # total index 20: 27 is still to come
    assert last(12, 1, per_epoch_counting=False)  # total index 27


def test_mid_epoch_validations_are_steps_and_the_report_counts_epochs_saved(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """With val_check_interval=0.5 a step is half an epoch: a trial set to 2 epochs and cut at its
    first validation trained 7 of 15 batches. optimization_results.yaml counts that (not one epoch
    per report), what pruning saved, and the validations; trials.csv has each trial's epochs."""
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01, "n_warmup_steps": 1}
    search_config(tmp_path, "half", n_trials=1, pruner=pruner)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("half", tmp_path, sweep_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=2"
    proc = run_sweep([*cmd, "trainer.val_check_interval=0.5"])
    (trial,) = load(sweep_dir, "half").get_trials()
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [1]
    assert trial.user_attrs["epochs_trained"] == round(7 / 15, 3)
    assert trial.user_attrs["epochs_planned"] == 2
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trial_epochs_total"] == round(7 / 15, 2)
    assert results["trial_epochs_saved"] == round(2 - 7 / 15, 2)
    assert results["trial_validations_total"] == 1
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert float(rows[0]["epochs_trained"]) == round(7 / 15, 3)
    assert "saved by pruning" in proc.stdout + proc.stderr


def test_epoch_counts_fall_back_to_one_epoch_per_report() -> None:
    """Trials without the reporter's attributes (CV trials report folds; older studies) count one
    epoch per report and save nothing; a pruned trial saves its planned minus trained epochs."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from src.sweep.report import epoch_counts

    dist = {"x": FloatDistribution(0, 1)}
    old = create_trial(
        state=TrialState.PRUNED,
        params={"x": 0.1},
        distributions=dist,
        intermediate_values={1: 0.5, 2: 0.6},
    )
    cut = create_trial(
        state=TrialState.PRUNED,
        params={"x": 0.2},
        distributions=dist,
        intermediate_values={1: 0.5},
        user_attrs={"epochs_trained": 0.5, "epochs_planned": 3},
    )
    full = create_trial(
        state=TrialState.COMPLETE,
        value=0.9,
        params={"x": 0.3},
        distributions=dist,
        intermediate_values={1: 0.7, 2: 0.8, 3: 0.85, 4: 0.9},
        user_attrs={"epochs_trained": 2.0, "epochs_planned": 2},
    )
    assert epoch_counts([old, cut, full]) == {
        "trial_epochs_total": 4.5,
        "trial_epochs_saved": 2.5,
        "trial_validations_total": 7,
    }


def test_shipped_searches_fit_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hparams_search=sentiment` searches a 4,000-sentence slice on a CPU and the whole of SST-2
    on a GPU; search configs skip the trials' test pass."""
    import src

    cfg = OmegaConf.create(
        {"limit_train": "${ftlab_cpu_or_gpu:4000,null}", "val": "${ftlab_cpu_or_gpu:0.1,0.02}"}
    )
    monkeypatch.setattr(src, "has_gpu", lambda: False)
    assert (cfg.limit_train, cfg.val) == (4000, 0.1)
    monkeypatch.setattr(src, "has_gpu", lambda: True)
    assert (cfg.limit_train, cfg.val) == (None, 0.02)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert src.has_gpu() is False
    for name in ("sentiment", "hymenoptera"):
        search = OmegaConf.load(f"conf/hparams_search/{name}.yaml")
        assert search.test is False
        assert any("pruner" in str(d) for d in search.defaults), name
