"""Operators (import the classes from their modules, e.g. ``.spot_training``)."""
