"""The ``t2v`` command line: the top layer, above ``jobs`` (submission) and ``pipeline`` (stages)."""
