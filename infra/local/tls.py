"""A private CA and a server certificate it signs (P-256, SHA-256), as PEM bytes.

For pebble's own HTTPS directory in a local environment (infra/local/acme.py) and for tests
that serve HTTPS on loopback. Nothing here touches the disk: callers write the files with the
modes they need (keys 0600).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Sequence

#: Certificates start a little in the past, so a clock slightly behind still accepts them.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    ca: bytes       # the root to trust
    ca_key: bytes   # PKCS#8, unencrypted
    cert: bytes     # the server certificate
    key: bytes      # its key, PKCS#8, unencrypted


def issue(ca_name: str, common_name: str, valid: dt.timedelta, *, dns: Sequence[str] = (),
          ips: Sequence[str] = ()) -> Issued:
    """A new CA named `ca_name` and a serverAuth certificate for `common_name` with the SANs `dns`
    and `ips`; both valid from BACKDATE ago until `valid` from now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - BACKDATE, now + valid
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM

    def private(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    return Issued(ca=ca.public_bytes(pem), ca_key=private(ca_key), cert=cert.public_bytes(pem), key=private(key))
