"""Placeholder: fixtures are being written (see issue 2)."""
