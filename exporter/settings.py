"""The exporter's own section of the configuration file (``exporter:``): its endpoint, refresh,
bounds and filters, declared once here and registered with the ground floor's loader, which
validates it with the rest of the file and builds it as ``config.exporter``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from pipeline.config import ConfigError, Secret, config_section, refuse_half_pair

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9847"

# host:port, [ipv6]:port or :port, with a port of 0 to 65535.
_LISTEN_ADDRESS = (r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):"
                   r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})$")
_BCRYPT_HASH = r"^\$2[aby]\$(0[4-9]|1[0-6])\$"
_LISTEN_ADDRESS_FORM = "host:port, [ipv6]:port, or :port for every address (port 0 to 65535)"

# A user's password as exporter-toolkit's basic_auth_users gives it (here and in its web config file).
BcryptHash = Annotated[str, Field(pattern=_BCRYPT_HASH, json_schema_extra={"writeOnly": True}, description=(
    "a bcrypt hash ($2a$, $2b$ or $2y$) of cost 04 to 16 (each step doubles the time a login takes)"))]

Patterns = tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class NameFilter:
    """Allow-list then deny-list of regular expressions, matched against the whole name."""

    allow: Annotated[Patterns, Field(description="A name is watched when one of these matches it whole...")] = (
        re.compile(".*"),)
    deny: Annotated[Patterns, Field(description="... and none of these does.")] = ()

    def __call__(self, name: str) -> bool:
        return any(p.fullmatch(name) for p in self.allow) and not any(p.fullmatch(name) for p in self.deny)


@dataclass(frozen=True)
class WebSettings:
    tls_cert_file: Annotated[str | None, Field(min_length=1, description=(
        "PEM certificate: HTTPS instead of HTTP (with tls_key_file).")) ] = None
    tls_key_file: Annotated[str | None, Field(min_length=1, description="PEM key of tls_cert_file.")] = None
    tls_key_password: Annotated[str | None, Field(description="Password of an encrypted tls_key_file."),
                                Secret(inline=False)] = field(default=None, repr=False)
    basic_auth_users: Annotated[Mapping[str, BcryptHash], Field(
        description="user name -> bcrypt hash of the password")] = field(default_factory=dict, repr=False)

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> WebSettings:
        refuse_half_pair(given, path, source, cert="tls_cert_file", key="tls_key_file")
        return self


PartitionDetail = Literal["all", "lag", "none"]


@dataclass(frozen=True)
class PartitionSeries:
    """How much of a consumer group is told per partition. Per group and topic (summed lag, max lag,
    max lag in seconds, partitions lagging and uncommitted, last progress) is always told; per
    partition costs one series per committed partition and metric, which at a thousand groups on
    a thousand partitions each is millions of series (docs/scale.md)."""

    detail: Annotated[PartitionDetail, Field(description=(
        "Per-partition series of the groups chosen below: all (lag, lag in seconds, committed offset, "
        "when it last moved), lag (kafka_consumer_group_lag only, what the guide's queries read) or none."))] = "all"
    groups: Annotated[NameFilter, Field(description=(
        "Groups given per-partition series; the others are told per topic only."))] = NameFilter()


@dataclass(frozen=True)
class ShardSettings:
    """One of several exporters sharing one cluster's consumer groups (docs/scale.md)."""

    index: Annotated[int, Field(ge=0, le=1023, description=(
        "This exporter's shard, 0 to count - 1. Shard 0 also reports the topic, cluster, pipeline, DLQ and "
        "service series, once for all shards."))] = 0
    count: Annotated[int, Field(ge=1, le=1024, description=(
        "Exporters sharing the groups; each owns the groups whose id hashes to its index (rendezvous "
        "hashing: changing the count moves about 1/count of the groups)."))] = 1

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> ShardSettings:
        if self.index >= self.count:
            raise ConfigError(f"{source}: {path}.index: {self.index} is not below count ({self.count})")
        return self


@config_section("exporter", "The exporter's own settings.",
                environment={"TREEWATCH_LISTEN_ADDRESS": ("listen_address",),
                             "TREEWATCH_SHARD_INDEX": ("shard", "index"), "TREEWATCH_SHARD_COUNT": ("shard", "count")})
@dataclass(frozen=True)
class ExporterSettings:
    listen_address: Annotated[str, Field(pattern=_LISTEN_ADDRESS, description=_LISTEN_ADDRESS_FORM)] = (
        DEFAULT_LISTEN_ADDRESS)
    refresh_interval_seconds: Annotated[float, Field(ge=0.1, le=3600, description=(
        "How often Kafka and the services are asked; a scrape only renders the latest answers."))] = 15.0
    stale_grace_seconds: Annotated[float, Field(ge=0, le=86400, description=(
        "How long series of a failing collector keep their last values before they disappear."))] = 120.0
    max_series: Annotated[int, Field(ge=1, le=10_000_000, description=(
        "Most series one refresh may produce; past it, consumer groups lose their per-partition series first "
        "(keeping their per-topic ones), then whole groups; what is left out is counted in "
        "treewatch_series_dropped."))] = (
        200_000)
    committed_offsets_concurrency: Annotated[int, Field(ge=1, le=64, description=(
        "Consumer groups whose committed offsets are fetched at the same time."))] = 8
    health_timeout_seconds: Annotated[float, Field(gt=0, le=300, description=(
        "How long one health probe may take."))] = 5.0
    health_max_body_bytes: Annotated[int, Field(ge=64, le=16_777_216, description=(
        "Largest health response read; a larger one counts as a failed probe."))] = 65_536
    max_connections: Annotated[int, Field(ge=1, le=4096, description=(
        "Connections the endpoint serves at once (one thread each); one more is answered 503 at once."))] = 64
    groups: Annotated[NameFilter, Field(description="Consumer groups to watch.")] = NameFilter()
    partition_series: Annotated[PartitionSeries, Field(description=(
        "Which groups are also told per partition, and how much; past max_series, groups lose their "
        "per-partition series before any group loses its per-topic ones."))] = PartitionSeries()
    shard: Annotated[ShardSettings, Field(description=(
        "Several exporters splitting the consumer groups of one cluster between them."))] = ShardSettings()
    topics: Annotated[NameFilter, Field(description=(
        "Topics to watch; Kafka's internal topics say nothing about the pipeline."))] = NameFilter(
        deny=(re.compile("__.*"),))
    web: Annotated[WebSettings, Field(description="The exporter's own endpoint: TLS and basic auth.")] = (
        WebSettings())

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_listen_address(self.listen_address)

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> ExporterSettings:
        """What the schema's pattern cannot say: a bracketed host is an IPv6 address."""
        try:
            split_listen_address(self.listen_address)
        except ValueError as error:
            raise ConfigError(f"{source}: {path}.listen_address: {error}") from None
        return self


def split_listen_address(address: str) -> tuple[str, int]:
    """(host, port) of a listen address (the file's exporter.listen_address or --web.listen-address);
    a ValueError says what is wrong with it."""
    if not re.fullmatch(_LISTEN_ADDRESS, address):
        raise ValueError(f"expected {_LISTEN_ADDRESS_FORM}, got {address!r}")
    host, _, port = address.rpartition(":")
    if host.startswith("["):
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return host, int(port)
