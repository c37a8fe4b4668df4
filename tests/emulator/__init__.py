"""Conformance suite: the official azure-servicebus SDK against sbsync.emulator."""
