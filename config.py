"""Command-line and YAML configuration for train.py / validate.py.

Filled in by the "Training and evaluation" issue.
"""
