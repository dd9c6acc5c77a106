"""Shared plumbing for the four scripts: config, logging, atomic writes, symbols, workspace paths, CLI errors."""
