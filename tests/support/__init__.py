"""Helpers shared by the tests, the bench and the scripts (never imported from a test module)."""

from pathlib import Path

# Real opencode output the tests read: its schema, a sample database, captured share traffic.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
