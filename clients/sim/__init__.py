"""Simulated instruments for the DAMIC-M example experiment."""
