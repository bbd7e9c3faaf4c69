"""
Development tools, not part of the controller itself.

Nothing in the region or the pserv imports from here.  The modules are in
the package (and the wheel) only because ``powerctl demo`` and the test
suite need them next to the product: a private PostgreSQL cluster
(:mod:`powerctl.devtools.pgcluster`) is what lets the demo run on a machine
with no database set up.
"""
