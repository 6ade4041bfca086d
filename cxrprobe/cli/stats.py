"""CLI commands: stats (filled in by its issue)."""

COMMANDS: list = []
