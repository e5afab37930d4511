"""Benchmark data sets: the checksummed download behind ``make data``."""
