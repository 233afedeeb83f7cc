"""treewatch: observability for the tree stamping pipeline. This package is the command line."""

from importlib.metadata import version

# Every section of the configuration file owned by a floor below the command line registers with
# pipeline.config when its module is imported; importing them all here means any command (and
# anything that imports treewatch) loads and validates the whole file, whatever else it imports.
import alerts.config  # noqa: F401
import exporter.settings  # noqa: F401

# pyproject.toml is the one place the version is written.
__version__ = version("treewatch")
