"""Official weights: convert a published checkpoint into a tagger checkpoint, and fetch the published files.

importing.py  `tagger import-checkpoint`: an official file -> a self-describing tagger checkpoint
pull.py       `tagger pull`: download, verify the checksum, convert and cache; tagger's only network code
licences.py   each family's weights and code licences, with the file that states them; recorded on import

The release table itself (names, URLs, checksums, licences) is models/releases.py, beside the importers.
May import: the foundation, models, checkpoint.
"""
