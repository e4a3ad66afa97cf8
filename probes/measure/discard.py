"""Reading bytes only to count them (HTTP bodies, download streams), with no copy where Linux allows it.

Over plain TCP, `recv` with MSG_TRUNC has Linux drop the bytes in the kernel and return how many there
were: nothing is copied out, and no buffer is touched. TLS records must be decrypted, into a buffer
shared by every reader that nobody ever reads. At a gigabit on a small box the copies, not the network,
would bound the rate a probe can see (docs/operations.md, "A small box").
"""

from __future__ import annotations

import mmap
import socket
import ssl

__all__ = ["CHUNK_BYTES", "discard"]

#: the most one plain-TCP read asks for
CHUNK_BYTES = 4 * 1024 * 1024
_TLS_CHUNK_BYTES = 256 * 1024
# Anonymous memory: its pages cost no RSS until a TLS read first writes them, and MSG_TRUNC never does.
_SINK = mmap.mmap(-1, CHUNK_BYTES)


def discard(sock: socket.socket, most: int = CHUNK_BYTES) -> int:
    """Read and drop up to `most` bytes (> 0) as they arrive; how many, 0 at EOF. Blocks as `sock` does."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.recv_into(_SINK, min(most, _TLS_CHUNK_BYTES))
    return sock.recv_into(_SINK, min(most, CHUNK_BYTES), socket.MSG_TRUNC)
