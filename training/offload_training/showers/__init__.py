"""showers."""
