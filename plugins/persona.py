"""Placeholder: the persona milestone evaluator is being written."""
