"""Built-in experiment trackers: ``tensorboard``. ``logs/metrics.jsonl`` is written by the core, always.

Importing this package stays light: the tensorboard package is imported only when a tracker is built.
"""
