"""Validation: great-expectations suites, statistical tests on realized outcomes, reports."""
