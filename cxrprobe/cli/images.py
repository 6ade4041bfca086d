"""CLI commands: images (filled in by its issue)."""

COMMANDS: list = []
