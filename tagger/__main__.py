"""`python -m tagger` runs the CLI."""

from tagger.cli import main

main()
