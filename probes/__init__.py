"""qiancheng probes: the measuring agent, the target-side responder, and the wire format they share."""

__version__ = "0.1.0"
