"""Pixelgate's benchmark harness: ``python -m bench.run`` (``make bench``).

Measures the gateway against the demo upstream it fronts, direct vs through
the gateway vs through a bare aiohttp proxy (the floor, ``bench.floor_proxy``),
under the same load; see ``bench.run`` for what it reports.
"""
