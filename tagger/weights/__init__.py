"""Official weights: convert a published checkpoint into a tagger checkpoint, and fetch the published files.

importing.py  `tagger import-checkpoint`: an official file -> a self-describing tagger checkpoint
pull.py       `tagger pull`: download, verify the checksum, convert and cache; tagger's only network code

The release table itself (names, URLs, checksums, licences) is models/releases.py, beside the importers.
May import: the foundation, models, checkpoint.
"""
