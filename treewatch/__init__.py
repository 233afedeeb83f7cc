"""treewatch: observability for the tree stamping pipeline. This package is the command line."""

__version__ = "0.1.0"
