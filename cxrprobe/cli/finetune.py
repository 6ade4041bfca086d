"""CLI commands: finetune (filled in by its issue)."""

COMMANDS: list = []
