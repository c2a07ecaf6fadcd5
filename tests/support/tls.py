"""Certificates made on the spot, and a PostgreSQL cluster that speaks TLS.

``make_pki(directory)`` writes a CA, a server certificate for 127.0.0.1/localhost, a server
certificate for the wrong host name, client certificates (one per common name asked for) and
a second, unrelated CA. ``start_tls_cluster`` starts a cluster with ssl=on whose pg_hba.conf
only has ``hostssl`` rules over TCP (scram-sha-256, plus ``cert`` for the role cert_user).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .pg import PASSWORDS, PgCluster, chown_tree, service_user

__all__ = ["TLS_HBA", "Pki", "make_pki", "start_tls_cluster", "use_server_certificate"]

TLS_HBA = """\
local all all trust
hostssl all cert_user 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 scram-sha-256
"""


@dataclass
class Pki:
    directory: str
    ca_cert: str = ""
    other_ca_cert: str = ""
    server_cert: str = ""
    server_key: str = ""
    wrong_host_cert: str = ""
    wrong_host_key: str = ""
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)  # CN -> (cert, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: str, data: bytes, mode: int = 0o644) -> str:
    Path(path).write_bytes(data)
    os.chmod(path, mode)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
          names: list[x509.GeneralName] | None, server: bool,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: str, clients: tuple[str, ...] = ("scram_user", "md5_user",
                                                          "cert_user")) -> Pki:
    os.makedirs(directory, exist_ok=True)
    pem = serialization.Encoding.PEM
    pki = Pki(directory)
    ca, ca_key = _ca("pgusher test CA")
    other, _ = _ca("unrelated CA")
    pki.ca_cert = _write(os.path.join(directory, "ca.crt"), ca.public_bytes(pem))
    pki.other_ca_cert = _write(os.path.join(directory, "other-ca.crt"), other.public_bytes(pem))
    good = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for stem, cn, names in (("server", "localhost", good),
                            ("wrong-host", "wrong.example", [x509.DNSName("wrong.example")])):
        cert, key = _leaf(ca, ca_key, cn, names, server=True)
        cert_path = _write(os.path.join(directory, f"{stem}.crt"), cert.public_bytes(pem))
        key_path = _write(os.path.join(directory, f"{stem}.key"), _key_pem(key), 0o600)
        if stem == "server":
            pki.server_cert, pki.server_key = cert_path, key_path
        else:
            pki.wrong_host_cert, pki.wrong_host_key = cert_path, key_path
    for cn in clients:
        cert, key = _leaf(ca, ca_key, cn, None, server=False)
        pki.clients[cn] = (
            _write(os.path.join(directory, f"client-{cn}.crt"), cert.public_bytes(pem)),
            _write(os.path.join(directory, f"client-{cn}.key"), _key_pem(key), 0o600),
        )
    # The pooler reads these again on reload, as the user it switched to (-u): its files.
    os.chmod(directory, 0o755)
    chown_tree(directory, service_user())
    return pki


def start_tls_cluster(bindir: str | None, pki: Pki) -> PgCluster:
    """A cluster with ssl=on and hostssl-only TCP rules; roles as in PASSWORDS plus cert_user.

    The server's certificate and key are copied next to the data directory (owned by the
    server's user, as PostgreSQL insists), so a test can swap them and reload.
    """
    cluster = PgCluster(bindir, hba=TLS_HBA)
    files = os.path.join(cluster.basedir, "tls")
    os.makedirs(files, exist_ok=True)
    cert = os.path.join(files, "server.crt")
    key = os.path.join(files, "server.key")
    Path(cert).write_bytes(Path(pki.server_cert).read_bytes())
    _write(key, Path(pki.server_key).read_bytes(), 0o600)
    Path(os.path.join(files, "ca.crt")).write_bytes(Path(pki.ca_cert).read_bytes())
    cluster.settings.update({
        "ssl": "on",
        "ssl_cert_file": cert,
        "ssl_key_file": key,
        "ssl_ca_file": os.path.join(files, "ca.crt"),
    })
    try:
        cluster.start()  # initdb hands the whole base directory to the server's user
        cluster.sql("SET password_encryption = 'scram-sha-256';\n"
                    "ALTER ROLE postgres PASSWORD 'postgres';", "postgres")
        cluster.create_role("scram_user", PASSWORDS["scram_user"])
        cluster.create_role("md5_user", PASSWORDS["md5_user"], encryption="md5")
        cluster.create_role("cert_user")
        cluster.create_database("app")
        cluster.grant_all(["scram_user", "md5_user", "cert_user"])
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def use_server_certificate(cluster: PgCluster, cert: str, key: str) -> None:
    """Make the TLS cluster present another certificate (takes effect on reload)."""
    files = os.path.join(cluster.basedir, "tls")
    Path(os.path.join(files, "server.crt")).write_bytes(Path(cert).read_bytes())
    Path(os.path.join(files, "server.key")).write_bytes(Path(key).read_bytes())
    chown_tree(files, service_user())
    cluster.reload()
