"""Starting the exporter with a setting it cannot honour stops at once with a message naming the
configuration file and the field, and leaves nothing running."""

from __future__ import annotations

import socket
import threading

import pytest

from exporter.app import build_exporter
from pipeline.config import ConfigError, parse_config


def _config(**exporter):
    # Kafka is never reached in these tests: the exporter must refuse before it matters.
    return parse_config({"kafka": {"bootstrap_servers": "127.0.0.1:9"}, "services": {}, "exporter": exporter},
                        source="treewatch.yaml")


def test_a_port_in_use_is_a_clear_error_and_leaves_no_thread():
    threads_before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"treewatch.yaml: exporter.listen_address: cannot listen on "
                                              rf"127.0.0.1:{port}: Address already in use"):
            build_exporter(_config(listen_address=f"127.0.0.1:{port}"))
    assert {t for t in threading.enumerate() if t.is_alive()} - threads_before == set()


def test_unreadable_tls_files_name_the_configuration_and_the_files(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=rf"treewatch.yaml: exporter.web: cannot load .*{missing.name}"):
        build_exporter(_config(listen_address="127.0.0.1:0",
                               web={"tls_cert_file": str(missing), "tls_key_file": str(missing)}))


def test_the_exporter_listens_on_ipv6_loopback():
    exporter = build_exporter(_config(listen_address="[::1]:0"))
    try:
        assert exporter.server.server_address[0] == "::1"
    finally:
        exporter.server.server_close()
        exporter.refresher.stop()


def test_the_memory_a_refresh_frees_can_be_handed_back_on_glibc():
    """Debian's Python runs on glibc: malloc_trim is there, and the exporter calls it after each refresh
    (exporter/memory.py says what it saves); elsewhere there is nothing to call and nothing fails."""
    from exporter.memory import _malloc_trim, release_freed_memory

    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release
    release_freed_memory()
