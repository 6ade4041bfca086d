"""CLI commands: data (filled in by its issue)."""

COMMANDS: list = []
