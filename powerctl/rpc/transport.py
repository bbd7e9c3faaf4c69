"""
TLS by default between hosts (issue 10): pure checks of the AMP endpoint
descriptions a region listens on and a pserv dials.

Power commands carry BMC passwords, so plain ``tcp:`` is only for loopback
(and ``unix:`` sockets); anything else must be ``ssl:`` (server) or
``tls:``/``ssl:`` (client) unless the configuration says
``allow_plaintext_rpc = true``.
"""

import ipaddress
import os

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


def client_ca_problem(description, client_ca):
    """Why ``rpc_client_ca`` cannot apply to a region listening on ``description``, or None."""
    if not client_ca:
        return None
    if _split(description)[0].lower() != "ssl":
        return (f"rpc_client_ca {client_ca} asks pservs for certificates, which only TLS "
                f"carries: rpc_endpoint {description} must be an ssl: endpoint")
    return None


def check_server(settings):
    """ConfigError for a region that would listen in plain text beyond loopback."""
    from powerctl.config import ConfigError

    client_ca = getattr(settings, "rpc_client_ca", "")
    problem = client_ca_problem(settings.rpc_endpoint, client_ca)
    if problem:
        raise ConfigError(problem)
    if client_ca and not os.path.exists(client_ca):
        raise ConfigError(f"rpc_client_ca {client_ca}: no such file or directory")
    if getattr(settings, "allow_plaintext_rpc", False):
        return
    problem = server_problem(settings.rpc_endpoint)
    if problem:
        raise ConfigError(problem)


def server_endpoint(reactor, description, client_ca=""):
    """
    The region's RPC endpoint for ``description``; with ``client_ca`` (a
    directory of CA certificates, ``*.pem``) the TLS handshake requires a
    client certificate signed by one of them (mutual TLS), so a host
    without a pserv certificate cannot even reach the AMP hand-shake.
    Twisted's ``ssl:`` description has no option for that, so the context
    of the endpoint it builds is replaced by one that verifies the peer.
    """
    from twisted.internet import endpoints, ssl
    from twisted.python.filepath import FilePath

    endpoint = endpoints.serverFromString(reactor, description)
    if not client_ca:
        return endpoint
    from powerctl.config import ConfigError

    problem = client_ca_problem(description, client_ca)
    if problem:
        raise ConfigError(problem)
    directory = FilePath(client_ca)
    if directory.isfile():
        files = [directory]
    elif directory.isdir():
        files = [f for f in directory.children() if f.basename().endswith(".pem")]
    else:
        raise ConfigError(f"rpc_client_ca {client_ca}: no such file or directory")
    try:
        authorities = [ssl.Certificate.loadPEM(f.getContent()).original for f in files]
    except Exception as e:
        raise ConfigError(f"rpc_client_ca {client_ca}: not PEM certificates ({e})") from None
    if not authorities:
        raise ConfigError(f"rpc_client_ca {client_ca}: no *.pem certificate in it")
    current = endpoint._sslContextFactory
    endpoint._sslContextFactory = ssl.CertificateOptions(
        privateKey=current.privateKey, certificate=current.certificate,
        extraCertChain=current.extraCertChain, verify=True, requireCertificate=True,
        caCerts=authorities)
    return endpoint
