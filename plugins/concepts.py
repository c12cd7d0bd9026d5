"""Placeholder: the concepts milestone evaluator is being written."""
