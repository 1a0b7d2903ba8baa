"""Pixelgate's benchmark harness: ``python -m bench.run`` (``make bench``).

Measures the gateway against the demo upstream it fronts, direct vs through
the gateway, under the same load; see ``bench.run`` for what it reports.
"""
