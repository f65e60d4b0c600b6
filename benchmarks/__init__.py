"""Benchmarks: scripts that measure the running system. Not part of the test suite."""
