"""``python -m treewatch.config_schema`` (part of ``make generate``): writes the JSON Schema of the
whole configuration file, every floor's sections, from their declarations to
pipeline/config.schema.json, for editors and for people; the loader validates with the same
schema, made from the same declarations."""

from __future__ import annotations

import json
from pathlib import Path

import treewatch  # noqa: F401  (its import registers every section of the configuration file)
from pipeline.config import config_schema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "pipeline" / "config.schema.json"


def render() -> str:
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
