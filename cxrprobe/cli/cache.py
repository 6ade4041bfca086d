"""CLI commands: cache (filled in by its issue)."""

COMMANDS: list = []
