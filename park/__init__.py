"""The park operations centre's side of the park tier: what runs at the park, not at a factory.

``park.summary`` reads every site's latest telemetry from the central time-series database (any
Prometheus query API: VictoriaMetrics single node or cluster ``vmselect``, Prometheus) and
``park.app`` serves it as a translated web page and a JSON endpoint (``ems park-summary``;
docs/fleet.md).
"""
