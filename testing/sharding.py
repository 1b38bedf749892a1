"""Placeholder: the sharding plugin is being written (see issue 3)."""
