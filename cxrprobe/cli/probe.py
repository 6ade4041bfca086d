"""CLI commands: probe (filled in by its issue)."""

COMMANDS: list = []
