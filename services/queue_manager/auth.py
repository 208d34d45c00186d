"""Three scopes of callers: participants and the admin (password, via HTTP Basic or a signed
session cookie) and workers (one bearer token per pool).

Passwords are hashed with argon2 when the app starts and kept only hashed. Verifying argon2 on
every request would cost tens of milliseconds each, so a password that verified once is
remembered as a keyed BLAKE2 digest (key random per process) and later compared against that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.queue_manager.settings import Settings

SESSION_COOKIE = "qm_session"
# OWASP's minimum argon2id profile: ~20 ms per hash, so 100 participants hash in ~2 s at start.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a participant, or the admin (who may also act as a user of that name)."""

    user: str
    admin: bool = False


class Passwords:
    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._hashes = {user: HASHER.hash(password) for user, password in passwords.items()}
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}

    def __contains__(self, user: str) -> bool:
        return user in self._hashes

    @property
    def users(self) -> list[str]:
        return sorted(self._hashes)

    def verify(self, user: str, password: str) -> bool:
        stored = self._hashes.get(user)
        if stored is None:
            HASHER.hash(password)  # same work as a wrong password: no user enumeration by timing
            return False
        digest = hashlib.blake2b(password.encode(), key=self._key).digest()
        known = self._verified.get(user)
        if known is not None:
            return hmac.compare_digest(known, digest)
        try:
            HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
        self._verified[user] = digest
        return True


class Authenticator:
    """Checks credentials of all three scopes; built once per app from ``Settings``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.admin_password is not None and settings.session_secret is not None
        self.admin_user = settings.admin_user
        self.participants = Passwords({u: p.get_secret_value() for u, p in settings.participants.items()})
        self.admin = Passwords({settings.admin_user: settings.admin_password.get_secret_value()})
        self._tokens = {pool: token.get_secret_value() for pool, token in settings.worker_tokens.items()}
        self._sessions = URLSafeTimedSerializer(settings.session_secret.get_secret_value(), salt="qm-session")
        self.session_seconds = int(settings.session_hours * 3600)

    def login(self, user: str, password: str) -> Principal | None:
        if user == self.admin_user and self.admin.verify(user, password):
            return Principal(user, admin=True)
        if user != self.admin_user and self.participants.verify(user, password):
            return Principal(user)
        return None

    def basic(self, authorization: str) -> Principal | None:
        """An ``Authorization: Basic ...`` header's principal, or None."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.login(user, password)

    def session_cookie(self, principal: Principal) -> str:
        return self._sessions.dumps({"u": principal.user, "a": principal.admin})

    def from_cookie(self, cookie: str) -> Principal | None:
        try:
            data = self._sessions.loads(cookie, max_age=self.session_seconds)
        except BadSignature:
            return None
        principal = Principal(str(data["u"]), admin=bool(data["a"]))
        known = principal.admin or principal.user in self.participants
        return principal if known else None

    def worker_pool(self, authorization: str) -> str | None:
        """The pool whose bearer token this is, or None."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for pool, expected in self._tokens.items():
            if hmac.compare_digest(expected.encode(), token.encode()):
                return pool
        return None

    def principal(self, authorization: str | None, cookie: str | None) -> Principal | None:
        if cookie:
            principal = self.from_cookie(cookie)
            if principal is not None:
                return principal
        return self.basic(authorization) if authorization else None
