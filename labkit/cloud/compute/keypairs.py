"""Key pairs: a user's public keys, which nova hands to a server's metadata at boot.

Key pairs belong to a user, not a project. Nova imports a public key (ssh or
x509) or generates one, returning the private half once and never keeping it.
The fingerprint is computed as nova does: MD5 of the ssh key blob (SHA-1 of an
x509 certificate), as colon-separated hex.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import random
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy import Float, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound
from labkit.cloud.ids import IdSource

KEY_TYPES = ("ssh", "x509")
DEFAULT_QUOTA = 100  # nova's [quota] key_pairs


class KeyPairRow(ComputeBase):
    """nova_api.key_pairs: unique per user and name."""

    __tablename__ = "key_pairs"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    fingerprint: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(10), default="ssh")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def _colons(hex_digest: str) -> str:
    return ":".join(a + b for a, b in zip(hex_digest[::2], hex_digest[1::2], strict=True))


def ssh_fingerprint(public_key: str) -> str:
    """Nova's fingerprint of an OpenSSH public key; BadRequest if it is not one."""
    try:
        serialization.load_ssh_public_key(public_key.strip().encode())
        blob = base64.b64decode(public_key.strip().split()[1])
    except (ValueError, IndexError, binascii.Error, UnicodeEncodeError) as exc:
        raise BadRequest("Keypair data is invalid: failed to generate fingerprint") from exc
    return _colons(hashlib.md5(blob, usedforsecurity=False).hexdigest())


def x509_fingerprint(pem: str) -> str:
    """Nova's fingerprint of a PEM certificate: SHA-1, colon-separated."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise BadRequest("Keypair data is invalid: failed to generate X509 fingerprint. "
                         f"Error message: {exc}") from exc
    return _colons(cert.fingerprint(hashes.SHA1()).hex())  # noqa: S303 - nova's choice


# -- generating keys ----------------------------------------------------------------------

def _probable_prime(rng: random.Random, bits: int) -> int:
    """A random prime of `bits` bits by Miller-Rabin, drawing only from rng."""
    small = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if any(n % p == 0 for p in small):
            continue
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(40):
            x = pow(rng.randrange(2, n - 2), d, n)
            if x in (1, n - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def _rsa_key(ids: IdSource, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key: random, or in deterministic mode derived from the seeded id stream.

    A seeded key keeps a notebook's stored fingerprints the same from run to run;
    it is a teaching lab's key, never one to trust.
    """
    if not ids.deterministic:
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    rng = random.Random(ids.random_bytes("keypair", 32))
    e = 65537
    while True:
        p, q = _probable_prime(rng, bits // 2), _probable_prime(rng, bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p=p, q=q, d=d, dmp1=d % (p - 1), dmq1=d % (q - 1), iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def generate_ssh(ids: IdSource) -> tuple[str, str, str]:
    """(private key PEM, "ssh-rsa ... Generated-by-Nova", fingerprint), as nova makes them."""
    key = _rsa_key(ids)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    public = f"{public} Generated-by-Nova"
    return private, public, ssh_fingerprint(public)


def generate_x509(ids: IdSource, user_id: str) -> tuple[str, str, str]:
    """(PKCS#12 bundle in base64, certificate PEM, fingerprint), as nova's WinRM certificate."""
    key = _rsa_key(ids)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])
    now = datetime.datetime(2013, 1, 1, tzinfo=datetime.UTC) if ids.deterministic else (
        datetime.datetime.now(datetime.UTC))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(ids.random_bytes("keypair-serial", 8), "big") | 1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    bundle = pkcs12.serialize_key_and_certificates(None, key, cert, None,
                                                   serialization.NoEncryption())
    return base64.b64encode(bundle).decode(), pem, x509_fingerprint(pem)


def _as_dict(row: KeyPairRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "user_id": row.user_id,
            "fingerprint": row.fingerprint, "public_key": row.public_key, "type": row.type,
            "created_at": row.created_at, "updated_at": row.updated_at}


class Keypairs:
    """Every user's key pairs, in the nova database."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids

    def get(self, user_id: str, name: str) -> dict[str, Any]:
        """One of a user's key pairs by name; NotFound in nova's words."""
        with self.db.session() as s:
            row = s.scalar(select(KeyPairRow).where(KeyPairRow.user_id == user_id,
                                                    KeyPairRow.name == name))
            if row is None:
                raise NotFound(f"Keypair {name} not found for user {user_id}")
            return _as_dict(row)

    def list(self, user_id: str, limit: int | None = None,
             marker: str | None = None) -> list[dict[str, Any]]:
        """A user's key pairs by name; the marker is the name of the last one seen."""
        with self.db.session() as s:
            rows = list(s.scalars(select(KeyPairRow).where(KeyPairRow.user_id == user_id)
                                  .order_by(KeyPairRow.name, KeyPairRow.id)))
        found = [_as_dict(r) for r in rows]
        if marker is not None:
            at = [i for i, k in enumerate(found) if k["name"] == marker]
            if not at:
                raise BadRequest(f"Marker {marker} could not be found.")
            found = found[at[0] + 1:]
        return found if limit is None else found[:limit]

    def count(self, user_id: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(KeyPairRow)
                            .where(KeyPairRow.user_id == user_id)) or 0

    def create(self, user_id: str, name: str, public_key: str | None = None,
               key_type: str = "ssh", quota: int | None = DEFAULT_QUOTA) -> dict[str, Any]:
        """Import `public_key`, or generate a key pair when it is None.

        A generated pair's dict carries `private_key`, which is not stored.
        Conflict when the user has a key pair of that name; 403 beyond `quota`.
        """
        if key_type not in KEY_TYPES:
            raise BadRequest(f"Keypair data is invalid: unknown key type {key_type}")
        if quota is not None and quota >= 0 and self.count(user_id) >= quota:
            raise Forbidden("Quota exceeded, too many key pairs.")
        private = None
        if public_key is None:
            # refuse a taken name before spending time on a new key
            self._refuse_taken(user_id, name)
            if key_type == "ssh":
                private, public_key, fingerprint = generate_ssh(self.ids)
            else:
                private, public_key, fingerprint = generate_x509(self.ids, user_id)
        elif key_type == "ssh":
            fingerprint = ssh_fingerprint(public_key)
        else:
            fingerprint = x509_fingerprint(public_key)
        self._refuse_taken(user_id, name)
        with self.db.session() as s:
            row = KeyPairRow(name=name, user_id=user_id, fingerprint=fingerprint,
                             public_key=public_key, type=key_type, created_at=time.time())
            s.add(row)
            s.flush()
            created = _as_dict(row)
        if private is not None:
            created["private_key"] = private
        return created

    def _refuse_taken(self, user_id: str, name: str) -> None:
        with self.db.session() as s:
            taken = s.scalar(select(KeyPairRow.id).where(KeyPairRow.user_id == user_id,
                                                         KeyPairRow.name == name))
        if taken is not None:
            raise Conflict(f"Key pair '{name}' already exists.")

    def delete(self, user_id: str, name: str) -> None:
        with self.db.session() as s:
            row = s.scalar(select(KeyPairRow).where(KeyPairRow.user_id == user_id,
                                                    KeyPairRow.name == name))
            if row is None:
                raise NotFound(f"Keypair {name} not found for user {user_id}")
            s.delete(row)
