"""Operator review of the reports the classifier was not sure of; decisions become training examples."""
