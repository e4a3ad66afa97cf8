"""`qiancheng-probe once` names each target after its host, in the characters a target name allows."""

from __future__ import annotations

import pytest

from qiancheng.probes.once import _once_target


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("198.18.0.1", "198.18.0.1"),
        ("198.18.0.1:53", "198.18.0.1"),
        ("edge.example.net", "edge.example.net"),
        ("https://cdn.example.net/obj?x=1", "cdn.example.net"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::1", "0000:0000:0000:0000:0000:0000:0000:0001"),
        ("https://[::1]:8443/x", "0000:0000:0000:0000:0000:0000:0000:0001"),
        ("odd host", "odd_host"),
        ("_svc", "t_svc"),
    ],
)
def test_a_target_is_named_after_its_host(address: str, name: str) -> None:
    target = _once_target(address, "cdn")
    assert (target.name, target.address, target.target_class) == (name, address, "cdn")
