"""CLI commands: study (filled in by its issue)."""

COMMANDS: list = []
