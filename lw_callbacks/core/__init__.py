"""Internal cores shared by the Trainer callbacks and the Fabric classes.

Each core does one concern's work on plain values (a run, a step, a mapping of metrics, a module)
and knows nothing of the Trainer: the Trainer callbacks map Lightning's hooks onto a core, the
Fabric classes call the same core from a Fabric loop. Writes to W&B go through ``_wandb.py``.

Public inside the package only: these names may change in any release, with no compatibility
promise. Use the callbacks in :mod:`lw_callbacks` and :mod:`lw_callbacks.fabric` instead.
"""
