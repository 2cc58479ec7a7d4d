"""PSLA label enhancement: a teacher's scores and a class ontology add the labels a weak set is missing.

rules.py   the rules on (clips, classes) matrices: per-class thresholds, Type I (children), Type II (ancestors)
run.py     `tagger enhance-labels` as a library call: teacher scores (cached), the rules, the written outputs
report.py  what was added per class and why, as console tables, Markdown and CSV

May import: the foundation, models, checkpoint, data, inference, evaluation.
"""
