"""Data: which clips, which labels, and their audio or features, at any scale.

manifests.py      AST JSON, AudioSet CSV, ESC-50, FSD50K, folder-per-class, plain CSV -> examples
table.py          columnar clip tables: ids in one buffer, labels as CSR (2 M clips without Python objects)
clips.py          `open_clips`: a manifest, a pack or an AudioSet HDF5 file as one table plus an audio reader
pack.py, pack_writer.py   `tagger pack`: encoded audio in HDF5 shards with a memory-mapped index
audioset_hdf5.py  the official PaSST / PANNs AudioSet HDF5 files, read as they are
store.py, extract.py      the feature cache and `tagger extract-features`, which fills it
dataset.py        waveform or cached-feature datasets; sampling.py the balanced sampler's weights
synth.py          `tagger synthesize`: a small labelled set of synthetic sounds, for demos and tests
strong.py         strong labels (onset, offset, label): DCASE / AudioSet-Strong TSVs, predict output

May import: errors, version, fileio, console, jobs, labels, audio, frontends; never models or anything above.
`tagger pack` imports no torch.
"""
