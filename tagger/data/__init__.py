"""Data: manifests (which clips, which labels), balanced sampling, and the datasets built on them."""
