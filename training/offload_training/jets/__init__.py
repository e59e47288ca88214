"""jets."""
