"""Warm start: known-good configurations first (`hydra.sweeper.enqueue`), and the finished trials
of an earlier study copied into a new one (`hydra.sweeper.seed_from`) so its sampler starts from
what is known.

Both run once per study, under the budget lock, before any trial is asked for: re-running the
sweep command (resume) or a second command on the same study adds nothing twice. Enqueued trials
are ordinary trials of the study (they count towards `n_trials`); seeded trials are marked
`seeded_from` and do not (they are not work this study did).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from src.errors import ConfigError
from src.sweep.space import SearchSpace
from src.sweep.study import load_existing_study, mask_url

log = logging.getLogger(__name__)

SEEDED_ATTR = "ftlab_seeded_from"  # study user attr: the sources already copied


def _coerce(key: str, value: Any, dist: BaseDistribution) -> Any:
    """`value` as the distribution holds it, or None when it is outside it."""
    try:
        if isinstance(dist, FloatDistribution):
            value = float(value)
            if not math.isfinite(value):
                return None
        elif isinstance(dist, IntDistribution):
            if isinstance(value, bool) or float(value) != int(float(value)):
                return None
            value = int(float(value))
        internal = dist.to_internal_repr(value)
    except (TypeError, ValueError):
        return None
    return value if dist._contains(internal) else None


def enqueue_params(
    space: SearchSpace, entries: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """`hydra.sweeper.enqueue` checked against the search space; the values typed as it samples
    them. A key may be left out (the sampler picks it); one outside the space is an error."""
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise ConfigError(
            "hydra.sweeper.enqueue must be a list of {key: value} dicts, e.g. "
            "'hydra.sweeper.enqueue=[{optimizer.lr:3e-5,data.batch_size:32}]'"
        )
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError(
                f"hydra.sweeper.enqueue[{i}]={entry!r} is not a {{key: value}} dict of searched keys"
            )
        params: dict[str, Any] = {}
        for key, value in entry.items():
            if key not in space:
                raise ConfigError(
                    f"hydra.sweeper.enqueue[{i}]: {key!r} is not searched (searched: {', '.join(space)})"
                )
            typed = _coerce(key, value, space[key])
            if typed is None:
                raise ConfigError(
                    f"hydra.sweeper.enqueue[{i}]: {key}={value!r} is outside its search range {space[key]}"
                )
            params[str(key)] = typed
        checked.append(params)
    return checked


def enqueue(study: optuna.Study, space: SearchSpace, entries: Sequence[Mapping[str, Any]]) -> int:
    """Enqueue each configuration unless the study already has it (any state): returns how many."""
    added = 0
    for params in enqueue_params(space, entries):
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
        if len(study.get_trials(deepcopy=False)) > before:
            added += 1
            log.info("enqueued: %s", params)
    return added


def fitting_copy(trial: FrozenTrial, space: SearchSpace, source: str) -> FrozenTrial | None:
    """`trial` as a finished trial of the new space, or None when its params do not fit it: each
    searched key must have a value inside the new range; keys no longer searched are dropped."""
    params = {}
    for key, dist in space.items():
        if key not in trial.params:
            return None
        value = _coerce(key, trial.params[key], dist)
        if value is None:
            return None
        params[key] = value
    value = trial.value if trial.state == TrialState.COMPLETE else None
    if trial.state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        return None
    return create_trial(
        state=trial.state,
        value=value,
        params=params,
        distributions=dict(space),
        user_attrs={**trial.user_attrs, "seeded_from": f"{source}#{trial.number}"},
        intermediate_values={
            int(k): float(v) for k, v in trial.intermediate_values.items() if math.isfinite(v)
        },
    )


def seed_from(
    study: optuna.Study, space: SearchSpace, spec: Mapping[str, Any], own_url: str
) -> int:
    """Copy the COMPLETE and PRUNED trials of the study `spec` names ({storage, study_name})
    whose params fit `space` into `study`, once per source; returns how many were copied."""
    if not isinstance(spec, Mapping) or not spec.get("storage"):
        raise ConfigError(
            "hydra.sweeper.seed_from needs a storage: "
            "'hydra.sweeper.seed_from={storage:logs/sweeps/old,study_name:old}'"
        )
    unknown = set(spec) - {"storage", "study_name"}
    if unknown:
        raise ConfigError(
            f"hydra.sweeper.seed_from: unknown key(s) {sorted(unknown)}; give storage and study_name"
        )
    source, url = load_existing_study(
        str(spec["storage"]), spec.get("study_name"), "hydra.sweeper.seed_from"
    )
    if url == own_url and source.study_name == study.study_name:
        raise ConfigError("hydra.sweeper.seed_from names this study itself: give an earlier one")
    if source.direction != study.direction:
        raise ConfigError(
            f"hydra.sweeper.seed_from: study {source.study_name!r} was to "
            f"{source.direction.name.lower()}, this one is to {study.direction.name.lower()}"
        )
    key = f"{mask_url(url)}#{source.study_name}"
    done = list(study.user_attrs.get(SEEDED_ATTR) or [])
    if key in done:
        return 0
    finished = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    copies = [fitting_copy(t, space, source.study_name) for t in finished]
    fitting = [c for c in copies if c is not None]
    study.add_trials(fitting)
    study.set_user_attr(SEEDED_ATTR, [*done, key])
    log.info(
        "seeded from study %r in %s: %d finished trials copied, %d outside this search space",
        source.study_name,
        mask_url(url),
        len(fitting),
        len(copies) - len(fitting),
    )
    return len(fitting)
