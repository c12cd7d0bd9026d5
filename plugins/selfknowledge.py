"""Placeholder: the selfknowledge milestone evaluator is being written."""
