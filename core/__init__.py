"""qiancheng core: what every end shares and depends on nothing else of ours.

The result and wire format, the catalogue of kinds and their settings, errors, the clock, logs, the
YAML config loader, units (durations, sizes), statistics, the STAMP packet layout, socket address
helpers and the one-thread SQLite connection. The agent, the responder and the collector import this
package and never each other.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
