"""
The REST commands: ``node``, ``power``, ``ops``, ``podm``, ``cluster``, ``activity``,
``lockout``.

They talk to the region's API (``--api URL``, ``$POWERCTL_API``, default
``http://127.0.0.1:5240``) with treq, print human tables by default and
the API's JSON with ``--json``.  ``--api``, ``--api-timeout`` and ``--json``
go before or after the command (``powerctl --api URL node list``); after
it wins.  An API error (``{"error": {"code",
"message"}}``) becomes one line on stderr and a non-zero exit status:
400/422 exit 2 (bad input: nothing was written), 401/403 exit 3, an
unreachable API exit 4, a timeout exit 5, an answer that is not JSON exit
6, anything else exit 1.

Secrets never reach the terminal: pod-manager passwords are read from a
file or an echo-less prompt, and every agent parameter a driver schema
marks secret (or that looks like one) is shown as ``(set)``.

This module only registers them; each group lives in its own module:

* :mod:`powerctl.cli.client` -- the API client, its options, the command wrapper;
* :mod:`powerctl.cli.params` -- power configurations from ``--driver``/``--agent``/``--power-json``;
* :mod:`powerctl.cli.redaction` -- what is never printed;
* :mod:`powerctl.cli.node`, :mod:`~powerctl.cli.power`, :mod:`~powerctl.cli.ops`,
  :mod:`~powerctl.cli.podm`, :mod:`~powerctl.cli.cluster`,
  :mod:`~powerctl.cli.activity`, :mod:`~powerctl.cli.lockout` -- the commands.
"""

from powerctl.cli import activity, cluster, events, lockout, node, ops, podm, power
from powerctl.cli.client import add_global_options, api_options, apply_global_options

__all__ = ["add_commands", "add_global_options", "apply_global_options"]

#: The command modules, in the order ``powerctl --help`` lists them.
GROUPS = (node, power, ops, podm, cluster, activity, lockout, events)


def add_commands(subparsers):
    """Register every REST command, each with the API options."""
    parent = api_options()
    for group in GROUPS:
        group.add_commands(subparsers, parent)
