"""The guide's project reindex (reindex_project.sh, steps 2 and 3): publish a discovery request with
``force_regenerate`` so every file is stamped and indexed again, and follow it to completion.

Step 1 of the guide, deleting the project's points from Qdrant and its nodes from Memgraph, is not
done here: those stores belong to the pipeline, not to treewatch, which only reads Kafka and the
services' health.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pipeline.config import Config
from pipeline.events import discovery_request
from tools.request_journey import FollowedRequest, Progress, follow_request

NOT_CLEARED = ("the existing index is NOT cleared: Qdrant and Memgraph are outside treewatch; clear them "
               "first (the guide's reindex procedure, step 1) if the index is corrupted")


def run_reindex(config: Config, project_path: str, project_name: str, *, timeout_seconds: float = 3600.0,
                on_progress: Callable[[Progress], None] | None = None) -> FollowedRequest:
    request = discovery_request(project_path, project_name, str(uuid.uuid4()), force_regenerate=True)
    return follow_request(config, request, timeout_seconds, on_progress)
