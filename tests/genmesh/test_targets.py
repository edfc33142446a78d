"""Parsing of --*-target values: lists of replicas and dns:/// names."""

from __future__ import annotations

import pytest

from genmesh.targets import channel_target, literal_addresses, parse_target, resolve


def test_a_list_of_addresses_is_balanced_round_robin_over_an_ipv4_target() -> None:
    spec = parse_target("10.0.0.1:50054, 10.0.0.2:50054")
    assert spec.addresses == ("10.0.0.1:50054", "10.0.0.2:50054") and not spec.is_dns
    assert channel_target(spec) == "ipv4:10.0.0.1:50054,10.0.0.2:50054"
    assert literal_addresses(spec) == ["10.0.0.1:50054", "10.0.0.2:50054"]


def test_a_single_address_or_a_dns_name_is_left_to_grpc() -> None:
    assert channel_target(parse_target("inference:50054")) == "inference:50054"
    spec = parse_target("dns:///inference.genmesh.svc:50054")
    assert spec.is_dns and (spec.dns_host, spec.dns_port) == ("inference.genmesh.svc", 50054)
    assert channel_target(spec) == "dns:///inference.genmesh.svc:50054"
    assert literal_addresses(spec) == []


def test_host_names_in_a_list_are_resolved() -> None:
    assert channel_target(parse_target("localhost:1,127.0.0.1:2")).startswith("ipv")


async def test_resolve_follows_the_name_and_keeps_literals() -> None:
    assert await resolve(parse_target("127.0.0.1:5,127.0.0.2:5")) == ["127.0.0.1:5", "127.0.0.2:5"]
    assert "127.0.0.1:7" in await resolve(parse_target("dns:///localhost:7"))
    assert await resolve(parse_target("dns:///no-such-host.invalid:7")) == []


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "expected host:port"),
        ("a:1,,b:2", "expected host:port"),
        ("inference", "is not host:port"),
        ("a:1,a:1", "names a replica twice"),
        ("a:99999", "is not host:port"),
        ("dns:///inference", "is not host:port"),
    ],
)
def test_bad_targets_are_refused_with_the_reason(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_target(text)
