"""``python -m pixelgate`` (= the ``pixelgate`` script)."""

from pixelgate.proxy.cli import main

raise SystemExit(main())
