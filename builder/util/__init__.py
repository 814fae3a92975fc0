"""Shared helpers every stage may use: atomic writes, running tools, console and progress,
errors, secrets, the cache folder, strict YAML and template rendering. Imports no stage.
"""
