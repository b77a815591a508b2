"""What a running Kanal tells a monitoring system: live runs, their counters, probes' findings.

`live` is the process-wide registry the runners report to (plain Python,
no dependency); `collector` turns it into Prometheus metrics for the
`--http-port` service (`jobs.service`).
"""
