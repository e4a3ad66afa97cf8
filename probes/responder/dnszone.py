"""The DNS test zone as a pure function: query bytes in, answer bytes (or nothing) out; no sockets.

Every name under the zone (its apex and any subname, so probes can ask unique names and defeat
caches) has the same A, AAAA and TXT records; other types get NOERROR with no answer (NODATA);
names outside the zone get NXDOMAIN. Answers are authoritative (AA). Garbage never raises: a query
with a readable header gets FORMERR, anything shorter, and any response, is dropped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from .config import DnsZoneConfig

__all__ = ["Zone", "answer", "UDP_PLAIN_PAYLOAD_BYTES", "TCP_PAYLOAD_BYTES"]

UDP_PLAIN_PAYLOAD_BYTES = 512  # RFC 1035 §4.2.1: without EDNS a UDP answer fits 512 bytes
TCP_PAYLOAD_BYTES = 65535  # the 2-byte length prefix is the only bound over TCP (RFC 1035 §4.2.2)
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_TXT_STRING_BYTES = 255  # one <character-string> holds at most 255 bytes (RFC 1035 §3.3)


@dataclass(frozen=True, slots=True)
class Zone:
    """The zone's apex and the records every name under it has (a type not in `records` has none)."""

    origin: dns.name.Name
    ttl: int
    records: dict[dns.rdatatype.RdataType, dns.rdata.Rdata]

    @classmethod
    def from_config(cls, config: DnsZoneConfig) -> Zone:
        """Build the zone from a checked DnsZoneConfig."""
        IN = dns.rdataclass.IN
        records: dict[dns.rdatatype.RdataType, dns.rdata.Rdata] = {}
        if config.a is not None:
            records[dns.rdatatype.A] = dns.rdata.from_text(IN, dns.rdatatype.A, config.a)
        if config.aaaa is not None:
            records[dns.rdatatype.AAAA] = dns.rdata.from_text(IN, dns.rdatatype.AAAA, config.aaaa)
        if config.txt is not None:
            text = config.txt.encode()
            strings = [text[i : i + _TXT_STRING_BYTES] for i in range(0, len(text), _TXT_STRING_BYTES)] or [b""]
            records[dns.rdatatype.TXT] = dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings)
        return cls(dns.name.from_text(config.zone), config.ttl, records)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header reads but whose body does not; None to drop it."""
    if len(wire) < _HEADER.size:
        return None
    query_id, flags = _HEADER.unpack_from(wire)[:2]
    if flags & dns.flags.QR:
        return None  # never answer a response: two responders would echo each other forever
    opcode_bits = flags & 0x7800
    return _HEADER.pack(query_id, dns.flags.QR | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0)


def _response(query: dns.message.Message, zone: Zone) -> dns.message.Message:
    """The answer to a parsed query (header checks done here, sizes by the caller)."""
    # 1232 bytes: the EDNS size that avoids IP fragmentation on nearly every path (DNS Flag Day 2020)
    response = dns.message.make_response(query, our_payload=1232)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
        response.set_rcode(dns.rcode.REFUSED)  # CHAOS and friends: not ours to answer
        return response
    response.flags |= dns.flags.AA
    if not question.name.is_subdomain(zone.origin):
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    if question.rdtype == dns.rdatatype.ANY:
        wanted = list(zone.records)
    else:
        wanted = [question.rdtype] if question.rdtype in zone.records else []
    for rdtype in wanted:
        response.answer.append(dns.rrset.from_rdata(question.name, zone.ttl, zone.records[rdtype]))
    return response


def answer(wire: bytes, zone: Zone, transport: str = "udp") -> bytes | None:
    """Answer bytes for the query `wire` received over `transport` ("udp" or "tcp"); None: send nothing."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - garbage may raise anything from the parser; the server must outlive it
        return _formerr(wire)
    if query.flags & dns.flags.QR:
        return None
    if transport == "tcp":
        limit = TCP_PAYLOAD_BYTES
    else:
        # The size the client said it can take (RFC 6891 §6.2.5), never less than plain DNS's 512.
        limit = max(UDP_PLAIN_PAYLOAD_BYTES, query.payload) if query.edns >= 0 else UDP_PLAIN_PAYLOAD_BYTES
    try:
        response = _response(query, zone)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 §9: too big for UDP → no answer, TC set; the client retries over TCP
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)
    except Exception:  # noqa: BLE001 - a query dnspython parsed but cannot answer (odd EDNS, TSIG): drop it
        return None
