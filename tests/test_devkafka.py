"""The local Kafka harness itself."""

from __future__ import annotations

from devkafka import _kafka_cluster_id, free_port, free_ports


def test_cluster_ids_never_look_like_an_option_to_the_storage_tool():
    # One random id in 64 starts with "-"; kafka-storage then reads it as a flag and refuses.
    ids = [_kafka_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)


def test_free_ports_never_hand_out_the_same_port_twice():
    # Asked one at a time, the kernel would offer a just-released port again now and then.
    ports = [free_port() for _ in range(300)] + free_ports(300)
    assert len(set(ports)) == len(ports)
