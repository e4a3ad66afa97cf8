"""The UDP Speed Test Protocol (RFC 9946), by which the maximum IP-layer capacity of RFC 9097 is measured.

What the client (kind `capacity`) and the responder's server share: the PDU layouts (`pdu`), the
authentication of the control exchange (`auth`), the sending-rate table (`rates`) and the server's
rate adjustment (`rate_control`). The reference implementation, OB-UDPST (`udpst`, 9.0.0, protocol
version 20), is the peer we interoperate with in both roles; where its wire behaviour and a literal
reading would differ, we follow what it sends and accepts, and each such place says so.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONTROL_PORT", "PROTOCOL_VERSION", "OLDEST_PROTOCOL_VERSION"]

#: the server's control port (IANA-assigned; OB-UDPST before 9.0.0 used 25000)
CONTROL_PORT: Final = 24601
#: the version we send; a server also accepts a client of any version down to OLDEST_PROTOCOL_VERSION
PROTOCOL_VERSION: Final = 20
#: the 8.x servers and clients (no Null Request, no authenticated activation, sub-interval in seconds)
OLDEST_PROTOCOL_VERSION: Final = 11
