"""qiancheng collector: authenticated, idempotent ingest of probe batches into a store, and Prometheus metrics.

Data flows one way through its modules: `ingest` (auth, bounded body, validation) → `store` (durable,
deduplicated) → `live` (in-memory latest state) → `metrics` (exposition). `app` wires the routes and
`main` is the command line.
"""

from qiancheng.core import __version__

__all__ = ["__version__"]
