"""syncd: keeps a remote copy of every opencode session complete and current."""

__version__ = "0.1.0"
