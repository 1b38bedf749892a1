"""Shared test support for serializer and its users: the dtype x layout case catalog, pytest
fixtures, and process-group harnesses. Uses the library's public API only."""
