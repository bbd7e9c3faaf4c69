"""
The region's schema migrations, ``NNNN_name.sql``, read as package data by
:func:`powerctl.region.schema.migrations`.  A package only so that every
directory of powerctl is one and installs the same way; no code lives here.
"""
