#!/usr/bin/env python3
"""HTTP kind against curl: runs bench/http_vs_curl.py (see there).

    .venv/bin/python bench/http.py [--rounds 7] [--mark-rounds 30]

Every bench script has bench/ first on sys.path, where this file's name hides the standard library's
`http` package from them (aiohttp and urllib import it). Imported under that name, this file stands
aside: it loads the standard library's package and puts it in its own place in sys.modules, which the
import system then hands to whoever asked.
"""

import sys

if __name__ == "__main__":
    from http_vs_curl import main

    sys.exit(main())
else:
    import importlib.machinery
    import importlib.util
    import os

    _bench = os.path.dirname(os.path.abspath(__file__))
    _elsewhere = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _bench]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ImportError(f"the standard library's {__name__} package is not on sys.path")
    _standard = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _standard
    _spec.loader.exec_module(_standard)
