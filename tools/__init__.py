"""The operator tools of the guide (status, trace, dlq, groups, bench, reindex), against Kafka's own APIs.

Each module does the work and returns plain data; ``treewatch`` (the command line) parses the
arguments and prints. Floor 2: imports ``pipeline`` and libraries only.
"""


class ToolError(RuntimeError):
    """A request a tool cannot carry out (a missing topic, a group still in use), phrased for the
    operator; the command line prints it and exits 1."""
