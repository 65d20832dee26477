"""Fernet tokens, as keystone makes them: encrypted, signed, never stored.

The token is the Fernet format itself (version, timestamp, IV, AES-CBC
ciphertext, HMAC-SHA256) over a small JSON payload: user, methods, scope,
expiry, audit ids. Keystone packs the same fields with msgpack. We build the
token from its parts so that deterministic mode can seed the IV; reading goes
through cryptography's own Fernet, which proves the format.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC

from labkit.cloud.ids import IdSource


@dataclass(frozen=True)
class TokenPayload:
    user_id: str
    methods: tuple[str, ...]
    expires_at: float
    audit_ids: tuple[str, ...]
    project_id: str | None = None
    domain_id: str | None = None
    # The Fernet timestamp has whole seconds only; the payload keeps the exact time, so
    # a revocation and a new token in the same second are told apart.
    issued_at: float = 0.0

    def to_json(self) -> bytes:
        # times as whole microseconds: a float's text varies in length, and so would the token
        body = {"u": self.user_id, "m": list(self.methods), "e": _micro(self.expires_at),
                "i": _micro(self.issued_at), "a": list(self.audit_ids)}
        if self.project_id:
            body["p"] = self.project_id
        if self.domain_id:
            body["d"] = self.domain_id
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, issued_at: float) -> TokenPayload:
        body = json.loads(data)
        return cls(
            user_id=body["u"],
            methods=tuple(body["m"]),
            expires_at=body["e"] / 1e6,
            audit_ids=tuple(body["a"]),
            project_id=body.get("p"),
            domain_id=body.get("d"),
            issued_at=body["i"] / 1e6 if "i" in body else issued_at,
        )


def _micro(timestamp: float) -> int:
    return round(timestamp * 1_000_000)


class FernetTokens:
    """Issues and reads tokens with the keys in `<home>/fernet-keys/`, keystone's key repository."""

    def __init__(self, key_dir: Path, ids: IdSource) -> None:
        self.ids = ids
        key_dir.mkdir(parents=True, exist_ok=True)
        primary = key_dir / "0"
        if not primary.exists():
            # random even in deterministic mode: a key from a public seed would let anyone
            # mint tokens, and would revive revoked tokens after a reset
            key = base64.urlsafe_b64encode(os.urandom(32))
            primary.write_bytes(key)
            primary.chmod(0o600)
        self._key = primary.read_bytes().strip()
        raw = base64.urlsafe_b64decode(self._key)
        self._signing_key, self._encryption_key = raw[:16], raw[16:]
        self._fernet = Fernet(self._key)

    def issue(self, payload: TokenPayload) -> str:
        iv = self.ids.random_bytes("fernet-iv", 16)
        padder = padding.PKCS7(algorithms.AES.block_size).padder()
        padded = padder.update(payload.to_json()) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self._encryption_key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        parts = b"\x80" + struct.pack(">Q", int(payload.issued_at)) + iv + ciphertext
        mac = HMAC(self._signing_key, hashes.SHA256())
        mac.update(parts)
        # keystone strips the base64 padding from its tokens
        return base64.urlsafe_b64encode(parts + mac.finalize()).decode().rstrip("=")

    def read(self, token: str) -> TokenPayload:
        """The payload, or InvalidToken if the token was not made with our key."""
        data = (token + "=" * (-len(token) % 4)).encode()
        plain = self._fernet.decrypt(data)
        return TokenPayload.from_json(plain, float(self._fernet.extract_timestamp(data)))


__all__ = ["FernetTokens", "InvalidToken", "TokenPayload"]
