"""tagger: audio tagging toolkit. Importing the package stays cheap; heavy modules load on use."""

__version__ = "0.1.0"
