"""ekd's own token-signing keys: EC P-256 private keys (ES256), one PEM file each.

The newest key signs; every key in the folder verifies, so rotation is: add a key (`ekd keys
rotate`), restart (or let `refresh` pick it up), and remove the old file only after the longest
token lifetime has passed. File names start with a UTC creation stamp
(`20250101T120000000000Z-<kid>.pem`): "newest" is the greatest name, which survives copying
and restoring a folder where modification times do not. The `kid` is the RFC 7638 thumbprint,
computed from the key itself, so a renamed file cannot claim another key's id.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from joserfc.jwk import ECKey

log = logging.getLogger("ekd.security.keys")

ALGORITHM = "ES256"
CURVE = "P-256"
#: An unknown `kid` re-reads the folder at most this often (seconds): another worker process
#: may already sign with a key added by `ekd keys rotate`, and a flood of forged kids must not
#: turn into a flood of directory scans.
REFRESH_INTERVAL = 5.0


class KeyRingError(Exception):
    """The key folder cannot be used (unreadable, not a P-256 key, ...)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    #: File name (no directory): carries the creation stamp.
    name: str
    key: ECKey


class KeyRing:
    def __init__(self, directory: Path, keys: list[SigningKey]) -> None:
        self.directory = directory
        self._keys = keys
        self._by_kid = {k.kid: k for k in keys}
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path) -> KeyRing:
        """The keys in `directory` (possibly none: callers decide whether that is fatal)."""
        path = Path(directory)
        return cls(path, _read_keys(path))

    @classmethod
    def create(cls, directory: str | Path) -> KeyRing:
        """The keys in `directory`, with a first key made when there is none."""
        ring = cls.load(directory)
        if not ring:
            ring.rotate()
        return ring

    def rotate(self) -> str:
        """Add a new key, which signs from now on; returns its kid."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ECKey.generate_key(CURVE, private=True)
        kid = key.thumbprint()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{kid}.pem"
        # O_EXCL + 0600 from the start: the private key is never readable by others, not even
        # for the moment between create and chmod.
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.as_pem(private=True))
        with self._lock:
            self._install(_read_keys(self.directory))
        return kid

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the folder (throttled unless forced); True when it was read."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_INTERVAL:
            return False
        with self._lock:
            self._refreshed = now
            try:
                keys = _read_keys(self.directory)
            except KeyRingError as exc:
                log.warning("Key folder not re-read: %s", exc)
                return False
            if keys:
                self._install(keys)
        return True

    def _install(self, keys: list[SigningKey]) -> None:
        self._keys = keys
        self._by_kid = {k.kid: k for k in keys}
        self._refreshed = time.monotonic()

    # -- use --------------------------------------------------------------------------------

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Oldest first."""
        return tuple(self._keys)

    @property
    def signing_key(self) -> SigningKey:
        if not self._keys:
            raise KeyRingError(f"No signing key in {self.directory} (run `ekd keys rotate`)")
        return self._keys[-1]

    def key(self, kid: str) -> ECKey | None:
        """The key with this kid, for verifying; None when unknown (after one throttled
        re-read of the folder)."""
        found = self._by_kid.get(kid)
        if found is None and self.refresh():
            found = self._by_kid.get(kid)
        return found.key if found is not None else None

    def public_jwks(self) -> dict:
        """The verification keys as a JWKS (RFC 7517), for `GET /auth/jwks`."""
        return {"keys": [
            {**k.key.as_dict(private=False), "kid": k.kid, "use": "sig", "alg": ALGORITHM}
            for k in self._keys
        ]}


def _read_keys(directory: Path) -> list[SigningKey]:
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise KeyRingError(f"{directory} is not a folder")
    keys: list[SigningKey] = []
    for path in sorted(directory.glob("*.pem")):
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("Signing key %s is readable by others than its owner (chmod 600 it)",
                        path)
        try:
            key = ECKey.import_key(path.read_bytes())
        except Exception as exc:  # joserfc raises several types for a bad PEM
            raise KeyRingError(f"{path} is not an EC private key in PEM") from exc
        if not key.is_private or key.curve_name != CURVE:
            raise KeyRingError(f"{path} must hold a {CURVE} private key")
        keys.append(SigningKey(key.thumbprint(), path.name, key))
    return keys
