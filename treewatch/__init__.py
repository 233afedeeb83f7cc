"""treewatch: observability for the tree stamping pipeline. This package is the command line."""

from importlib.metadata import version

# pyproject.toml is the one place the version is written.
__version__ = version("treewatch")
