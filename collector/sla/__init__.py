"""SLA judgement: profiles of objectives (sla.yaml), indicators over sliding windows of stored results,
breach state with hysteresis, and its exposition as metrics and JSON.

Modules: `indicators` (pure statistics over a window's results), `profiles` (sla.yaml in, validated),
`breach` (the hysteresis state machine), `cache` (the recent results a collector on InfluxDB judges from),
`judge` (one judgement pass and the periodic task), `exposition` (Prometheus families).
"""
