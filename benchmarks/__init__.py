"""Benchmarks for egds (not part of the package): the original plan's exporter as a baseline, and physical floors."""
