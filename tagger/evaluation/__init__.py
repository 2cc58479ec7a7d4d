"""Evaluation: score a labelled data set and measure it.

metrics.py   mAP, AUC, d-prime, accuracy, lwlrap, per-class tables: numpy only
evaluate.py  run a checkpoint over a data set (through inference.predict), save and reload predictions
plots.py     the per-class AP and confusion-matrix PNG
sed.py       sound event detection as DCASE scores it: PSDS, event- and segment-based F1, score files, PSD-ROC
             PNG (sed_scores_eval, the optional `sed` extra)

May import: the foundation (errors, fileio, console, labels, audio), models, checkpoint, data, inference.
"""
