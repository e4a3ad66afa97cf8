"""qiancheng probes: both ends of a measurement, the measuring agent and the target-side responder.

The agent (config, scheduler, measure/, spool, uploader, CLI) and the responder (responder/) import
qiancheng.core and never each other.
"""
