"""Inference: score audio with a loaded model, the way `tagger predict` does.

runtime.py   Scorer: a model on a device and precision, its input-length policy, probabilities out; the event
             rule stored with a checkpoint (read, and stored in place)
predict.py   files, folders, long recordings and stored clips: whole clips or sliding windows, aggregated
events.py    frame scores -> events (hysteresis, gap merging, minimum duration), stitched across windows
timeline.py  the score heat-map PNG with events outlined
report.py    predictions as tables, JSON, JSON Lines and CSV; `run_predict` for the CLI

May import: errors, fileio, console, labels, audio, frontends, models, checkpoint, data. Never evaluation/,
training/, enhance/, ensemble/, export/, weights/, api, hear or cli.
"""
