"""Benchmarks (`make bench`, `make soak`)."""

import treewatch  # noqa: F401  (its import registers every section of the configuration file)
