"""
``powerctl admin tls init DIR``: a small certificate authority and a region
certificate, with ``cryptography``, for sites without their own PKI.

Writes into ``DIR`` (created mode 0700):

``ca/ca.pem``
    the CA certificate, alone in its directory: a pserv's ``trustRoots``;
``ca.key``
    the CA's private key (0600; keep it offline once the certificates exist);
``region.pem``, ``region.key``
    the region's certificate (for the names given) and key (0600);
``pserv.pem``, ``pserv.key``
    a client certificate for the pservs (0600 key), for mutual TLS.

The region then listens on ``ssl:5250:privateKey=DIR/region.key:certKey=
DIR/region.pem`` with ``rpc_client_ca = DIR/ca`` (pservs must show a
certificate of that CA) and each pserv dials ``tls:host=NAME:port=5250:
trustRoots=DIR/ca:certificate=DIR/pserv.pem:privateKey=DIR/pserv.key``
where NAME is one of the region's names.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alt_names(names):
    out = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def init(directory, names, now=None):
    """Create the CA and the region certificate for ``names``; the paths written."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not names:
        raise ValueError("at least one name for the region certificate")
    os.makedirs(os.path.join(directory, "ca"), mode=0o700, exist_ok=False)
    os.chmod(directory, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "powerctl CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pserv_key = ec.generate_private_key(ec.SECP256R1())
    pserv = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                         "powerctl pserv")]))
             .issuer_name(ca_name)
             .public_key(pserv_key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
             .sign(ca_key, hashes.SHA256()))
    paths = {
        "ca": os.path.join(directory, "ca", "ca.pem"),
        "ca_key": os.path.join(directory, "ca.key"),
        "cert": os.path.join(directory, "region.pem"),
        "key": os.path.join(directory, "region.key"),
        "pserv_cert": os.path.join(directory, "pserv.pem"),
        "pserv_key": os.path.join(directory, "pserv.key"),
    }
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths["ca_key"], _key_pem(ca_key), 0o600)
    _write(paths["cert"], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths["key"], _key_pem(key), 0o600)
    _write(paths["pserv_cert"], pserv.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths["pserv_key"], _key_pem(pserv_key), 0o600)
    return paths


def endpoints(paths, port, name):
    """
    The region's listening and a pserv's dialling endpoint descriptions, and
    the region's ``rpc_client_ca`` (mutual TLS: the pserv shows its
    certificate).
    """
    def escape(path):
        return path.replace("\\", "\\\\").replace(":", "\\:")

    ca_dir = os.path.dirname(paths["ca"])
    return (f"ssl:{port}:privateKey={escape(paths['key'])}:certKey={escape(paths['cert'])}",
            f"tls:host={name}:port={port}:trustRoots={escape(ca_dir)}"
            f":certificate={escape(paths['pserv_cert'])}"
            f":privateKey={escape(paths['pserv_key'])}",
            ca_dir)
