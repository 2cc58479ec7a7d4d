"""Training: config and recipes, the loop, schedules, losses, distributed helpers."""
