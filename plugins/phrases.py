"""Placeholder: the phrases milestone evaluator is being written."""
