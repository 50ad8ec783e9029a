"""What the sweeper and a trial process agree on: the environment variables the sweeper sets for
each trial, and the files a trial leaves in its run dir for the sweeper.

Kept apart from `src.sweep.trial` (the trial's side, which imports Lightning) so that the sweeper
itself starts without Lightning: a sweep command on a finished study, or one that only waits for
other machines' trials, has nothing to train.
"""

ENV_STORAGE = "FTLAB_SWEEP_STORAGE"  # the storage URL, or env:NAME / file:PATH when it has a secret
ENV_STORAGE_PROXY = (
    "FTLAB_SWEEP_STORAGE_PROXY"  # HOST:PORT of the storage proxy, when the sweep uses one
)
ENV_STUDY = "FTLAB_SWEEP_STUDY"
ENV_TRIAL_ID = "FTLAB_SWEEP_TRIAL_ID"
ENV_TRIAL_NUMBER = "FTLAB_SWEEP_TRIAL_NUMBER"
ENV_PRUNER = "FTLAB_SWEEP_PRUNER"  # JSON: the pruner's config ({"_target_": ..., ...} or null)
ENV_PARENT_PID = "FTLAB_SWEEP_PARENT_PID"
PRUNED_MARKER = "pruned.json"
# Trial user attributes the trial reporter sets: epochs trained by its latest report (fractional
# with mid-epoch validations) and the epochs it was set to train (its trainer.max_epochs).
EPOCHS_TRAINED_ATTR = "epochs_trained"
EPOCHS_PLANNED_ATTR = "epochs_planned"
TIMING_FILE = "trial_timing.json"  # {"first_step_at": unix time}: the sweeper's start-up measure
