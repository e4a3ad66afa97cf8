"""The responder: the target-side server probes measure against (HTTP transfers, TCP echo, DNS zone).

One process, one event loop: `main` parses the command line and config, `http`, `echo` and
`dnsserver` are the services, `dnszone` the pure DNS answering core, `sockets` binds them alike.
"""

from __future__ import annotations

from .config import ResponderConfig, load_responder_config

__all__ = ["ResponderConfig", "load_responder_config"]
