"""Training: `tagger train` with the papers' recipes, on one CPU or many GPUs across machines.

config.py       dataclasses with the papers' defaults, TOML recipes, `section.key=value` overrides
data.py         training and validation sources, targets per batch, teacher logits for distillation
init.py         ImageNet / AudioSet / checkpoint initialisation
trainer.py      the loop: mixup, SpecAugment, schedules, validation, checkpoints, exact resume
schedules.py, losses.py, memory.py, plots.py, distributed.py (torchrun / DDP)

May import: the foundation, models, checkpoint, data, evaluation (metrics).
"""
