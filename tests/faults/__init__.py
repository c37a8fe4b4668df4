"""Fault and soak tests (issue 8)."""
