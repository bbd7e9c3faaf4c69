"""
Packages are listed here because setup.cfg cannot say "find: plus one more".

``twisted.plugins`` is listed as a package although this repository has no
``twisted/__init__.py`` nor ``twisted/plugins/__init__.py`` (and must never
have them: a wheel would then overwrite Twisted's own).  That is how
Twisted's plugin documentation says to ship a plugin: the wheel puts
``powerctl_plugins.py`` into ``site-packages/twisted/plugins/``, next to
Twisted's own plugins, where ``twistd`` finds it.  Everything else lives in
setup.cfg.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["powerctl", "powerctl.*"]) + ["twisted.plugins"],
)
