"""The emulator's TLS certificate and server context.

With no certificate given, a development pair is made with the ``cryptography`` package: a
CA (``ca.pem``, what clients trust: ``connection_verify=emulator.ca_file``,
``REQUESTS_CA_BUNDLE``, ``NODE_EXTRA_CA_CERTS``) and a server certificate it signed for
``localhost``, ``127.0.0.1`` and ``::1`` (plus the emulator's host). A CA plus a leaf rather
than one self-signed leaf, because strict verifiers (Python 3.13's ``VERIFY_X509_STRICT``,
OpenSSL 3) refuse a leaf that doubles as its own CA. The pair is made once per process and
set of names (an EC P-256 key takes milliseconds), written to a private temporary directory
that is removed when the process exits.

Everything is lazy: an emulator that nobody reaches over TLS never imports ``cryptography``
or builds a context.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
import threading

_LOG = logging.getLogger(__name__)
_DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_generated: dict[tuple[str, ...], tuple[str, str, str]] = {}  # names -> (ca, cert, key) paths
_generate_lock = threading.Lock()


class TlsConfig:
    """Where the certificate comes from, and the server context built from it (once)."""

    def __init__(self, cert: str | None = None, key: str | None = None,
                 host: str | None = None) -> None:
        if key is not None and cert is None:
            raise ValueError("tls_key needs tls_cert")
        for path in (cert, key):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"no such certificate or key file: {path!r}")
        self._cert = cert
        self._key = key
        self._given = cert is not None
        names = list(_DEFAULT_NAMES)
        if host and host not in names and host not in ("0.0.0.0", "::", ""):
            names.append(host)
        self._names = tuple(names)
        self._ca_file: str | None = cert  # a given certificate (chain) is what clients trust
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    @property
    def given(self) -> bool:
        """Whether the certificate came from the user (so start() should check it)."""
        return self._given

    @property
    def ca_file(self) -> str:
        """The PEM file clients should trust (made on first use when none was given)."""
        self._ensure_files()
        assert self._ca_file is not None
        return self._ca_file

    def context(self) -> ssl.SSLContext:
        """The server-side context (any thread; built on first use)."""
        with self._lock:
            if self._context is None:
                self._ensure_files()
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(self._cert, self._key)  # type: ignore[arg-type]
                self._context = context
            return self._context

    def _ensure_files(self) -> None:
        if self._cert is None:
            ca, cert, key = _generated_pair(self._names)
            self._ca_file, self._cert, self._key = ca, cert, key


def development_pair(names: tuple[str, ...] = _DEFAULT_NAMES) -> tuple[str, str, str]:
    """Paths of the generated development CA, server certificate (chain) and key for
    ``names``; made once per process (benchmarks and tests hand them to an emulator
    process with ``--tls-cert``/``--tls-key`` and trust the CA)."""
    return _generated_pair(tuple(names))


def _generated_pair(names: tuple[str, ...]) -> tuple[str, str, str]:
    with _generate_lock:
        paths = _generated.get(names)
        if paths is None or not all(os.path.exists(p) for p in paths):
            paths = _generate(names)
            _generated[names] = paths
            _LOG.info("emulator TLS: generated a development CA; clients trust %s", paths[0])
        return paths


def _generate(names: tuple[str, ...]) -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=825)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "sbsync emulator development CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory = tempfile.mkdtemp(prefix="sbsync-emulator-tls-")  # mode 0700
    atexit.register(shutil.rmtree, directory, True)
    pem = serialization.Encoding.PEM
    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(cert_path, "wb") as f:  # the chain: leaf then CA
        f.write(cert.public_bytes(pem) + ca.public_bytes(pem))
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return ca_path, cert_path, key_path
