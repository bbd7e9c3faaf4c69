"""
TLS by default between hosts (issue 10): pure checks of the AMP endpoint
descriptions a region listens on and a pserv dials.

Power commands carry BMC passwords, so plain ``tcp:`` is only for loopback
(and ``unix:`` sockets); anything else must be ``ssl:`` (server) or
``tls:``/``ssl:`` (client) unless the configuration says
``allow_plaintext_rpc = true``.
"""

import ipaddress

WHY = ("power commands carry BMC passwords in clear text over it; use TLS "
       "(ssl: / tls: endpoints, certificates from 'powerctl admin tls init DIR') or, "
       "knowing the risk, set allow_plaintext_rpc = true")


def _split(description):
    """An endpoint description's parts: ``[type, args...]`` (``\\:`` escapes a colon)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _loopback(host):
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_problem(description):
    """Why a region must not listen on ``description`` in plain text, or None."""
    parts = _split(description)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6"):
        return None
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    interface = keywords.get("interface", "")
    if interface and _loopback(interface):
        return None
    where = interface or "every interface"
    return f"rpc_endpoint {description} listens in plain TCP on {where}: {WHY}"


def client_problem(description):
    """Why a pserv must not dial ``description`` in plain text, or None."""
    parts = _split(description)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6"):
        return None
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    host = keywords.get("host") or (positional[0] if positional else "")
    if host and _loopback(host):
        return None
    return f"region {description} is dialled in plain TCP to {host or '?'}: {WHY}"


def check_regions(settings):
    """ConfigError for a pserv that would dial a remote region in plain text."""
    from powerctl.config import ConfigError

    if getattr(settings, "allow_plaintext_rpc", False):
        return
    for description in settings.regions:
        problem = client_problem(description)
        if problem:
            raise ConfigError(problem)


def check_server(settings):
    """ConfigError for a region that would listen in plain text beyond loopback."""
    from powerctl.config import ConfigError

    if getattr(settings, "allow_plaintext_rpc", False):
        return
    problem = server_problem(settings.rpc_endpoint)
    if problem:
        raise ConfigError(problem)
