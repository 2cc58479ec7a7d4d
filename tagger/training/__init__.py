"""Training: `tagger train` with the papers' recipes, on one CPU or many GPUs across machines.

config.py       dataclasses with the papers' defaults, TOML recipes, `section.key=value` overrides
data.py         training and validation sources, targets per batch, teacher logits for distillation
init.py         ImageNet / AudioSet / checkpoint initialisation
trainer.py      the loop: mixup, SpecAugment, schedules, validation, checkpoints, exact resume
teach.py        `tagger teach`: a teacher's top-K logits on stored random draws of every clip (resumable)
teacher_targets.py  those draws and their storage: what teach writes and the trainer replays, bit for bit
schedules.py, losses.py, memory.py, plots.py, distributed.py (torchrun / DDP)

May import: the foundation, models, checkpoint, data, inference (the teacher of teach.py), evaluation (metrics).
"""
