"""The vocabulary every layer of Pixelgate speaks, and that imports none of them.

``request`` (what a client asks for), ``errors`` (what can go wrong, and its
OpenAI envelope), ``usage`` (tokens), ``translator`` (what an adapter gives
the relay, and what it is given), ``prices`` and ``record`` (what a request
cost and how it went). ``pixelgate.adapters`` and ``pixelgate.metrics`` build
on these; ``pixelgate.proxy`` on all three. The import contract in
pyproject.toml (``make test`` runs it) keeps it that way.
"""
