"""tagger."""
