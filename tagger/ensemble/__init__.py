"""Ensembles: weight averaging of one model's checkpoints, and prediction ensembles of any checkpoints.

combine.py   how member outputs become one output (mean probability, mean logit, weights learned on validation)
model.py     EnsembleModel: members run on the same audio (each at its own sample rate), outputs combined
store.py     the ensemble checkpoint file: member checkpoints plus how to combine them
averaging.py weight averaging, its compatibility checks, BatchNorm re-estimation
selection.py which checkpoints to use: epochs >= N, the best K, greedy forward selection
report.py    member and ensemble validation metrics, as a table and as JSON
members.py   what the modes share: settings, hooks, checkpoints as candidates, scoring one on validation data
predictions_mode.py, weights_mode.py, saved.py   the three ways to build an ensemble
run.py       the `tagger ensemble` command as a library function

May import: the foundation, models, checkpoint, data, inference, evaluation. combine.py, model.py and store.py are
what a loaded ensemble needs: they import models and checkpoint only (the loader reaches store.py by registry).
"""
