"""Whole studies: the config-driven plan (datasets × inits × methods), the demo and the study report."""
