"""Three scopes of callers: participants and the admin (password, via HTTP Basic or a session
cookie, see ``sessions``) and workers (one bearer token per pool).

Passwords are hashed with argon2 when the app starts and kept only hashed. Every check of a
password costs exactly one argon2 verification, whether the user exists (an unknown name is
verified against a dummy hash) and whether they logged in before: so neither the answer's time nor
the work reveals which names exist, and every guess costs the same. Only a password already known
to be right skips argon2 (HTTP Basic sends it on every request): remembered as a keyed BLAKE2
digest of name and password (key random per process), never the password itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.queue_manager.settings import Settings

SESSION_COOKIE = "qm_session"
# Set by every login; a browser that carries its user's is let through a lock others' guesses caused
# (``sessions.LoginGate``). It says nothing readable but the user name, signed, and a random id.
DEVICE_COOKIE = "qm_device"
DEVICE_SECONDS = 60 * 24 * 3600
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
        self._dummy = HASHER.hash(secrets.token_urlsafe(16))  # what an unknown name is checked against
        started = time.perf_counter()
        with contextlib.suppress(VerificationError):
            HASHER.verify(self._dummy, "")
        self.verify_seconds = time.perf_counter() - started
        """How long one verification takes here (what a refused unknown name waits instead)."""
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()

    def __contains__(self, user: str) -> bool:
        return user in self._hashes

    @property
    def users(self) -> list[str]:
        return sorted(self._hashes)

    def _digest(self, user: str, password: str) -> bytes:
        return hashlib.blake2b(f"{user}\0{password}".encode("utf-8", "surrogatepass"), key=self._key).digest()

    def remembered(self, user: str, password: str) -> bool:
        """Whether exactly these credentials verified before (no argon2)."""
        return self._digest(user, password) in self._verified

    def verify(self, user: str, password: str) -> bool:
        """One argon2 verification, against the user's hash or, for an unknown name, a dummy one."""
        try:
            HASHER.verify(self._hashes.get(user, self._dummy), password)
        except (VerificationError, InvalidHashError):
            return False
        if user not in self._hashes:
            return False
        self._verified.add(self._digest(user, password))
        return True


class Authenticator:
    """Checks credentials of all three scopes; built once per app from ``Settings``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.admin_password is not None and settings.session_secret is not None
        self.admin_user = settings.admin_user
        plain = {user: password.get_secret_value() for user, password in settings.participants.items()}
        admin = {settings.admin_user: settings.admin_password.get_secret_value()}
        self.participants, self.admin = Passwords(plain), Passwords(admin)
        self._tokens = {pool: token.get_secret_value() for pool, token in settings.worker_tokens.items()}
        secret = settings.session_secret.get_secret_value()
        self._sessions = URLSafeTimedSerializer(secret, salt="qm-session")
        self._devices = URLSafeTimedSerializer(secret, salt="qm-device")
        self.session_seconds = int(settings.session_hours * 3600)
        key = hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), digest_size=32).digest()
        self._fingerprints = {user: _fingerprint(key, user, pw) for user, pw in {**plain, **admin}.items()}

    def _passwords(self, user: str) -> Passwords:
        return self.admin if user == self.admin_user else self.participants

    def login(self, user: str, password: str) -> Principal | None:
        """The principal these credentials belong to, or None (one argon2 verification)."""
        if self._passwords(user).verify(user, password):
            return Principal(user, admin=user == self.admin_user)
        return None

    def remembered(self, user: str, password: str) -> Principal | None:
        """The principal of credentials that verified before, without argon2; else None."""
        if self._passwords(user).remembered(user, password):
            return Principal(user, admin=user == self.admin_user)
        return None

    def exists(self, user: str) -> bool:
        """Whether ``user`` is the admin's or a participant's name."""
        return user == self.admin_user or user in self.participants

    @property
    def verify_seconds(self) -> float:
        """How long one password verification takes on this host."""
        return self.participants.verify_seconds

    def fingerprint(self, user: str) -> str:
        """A keyed digest of ``user``'s password as configured now (the same in every process), kept
        with each session: once the organizer changes the password, the sessions opened with the
        old one are over."""
        return self._fingerprints.get(user, "")

    def known(self, principal: Principal, fingerprint: str | None) -> bool:
        """Whether a session's principal is still configured (a participant may have been removed)
        with the password it logged in with (``None``: a session older than fingerprints), and in
        the same role: an admin session of a name that is no longer the admin's (``adminUser``
        moved, the old name now a participant's) is over, whatever the password."""
        if principal.admin != (principal.user == self.admin_user):
            return False
        if not (principal.admin or principal.user in self.participants):
            return False
        return fingerprint is None or hmac.compare_digest(fingerprint, self.fingerprint(principal.user))

    def basic_credentials(self, authorization: str) -> tuple[str, str] | None:
        """User and password of an ``Authorization: Basic ...`` header, or None."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), non-ASCII characters, or not UTF-8
            return None
        return user, password

    def seal(self, session_id: str) -> str:
        """The cookie for a session id: signed, so a made-up cookie is refused without a lookup."""
        return self._sessions.dumps(session_id)

    def unseal(self, cookie: str) -> str | None:
        try:
            session_id = self._sessions.loads(cookie, max_age=self.session_seconds)
        except BadSignature:
            return None
        return session_id if isinstance(session_id, str) else None

    def device_cookie(self, user: str) -> str:
        """A new device cookie: this browser logged in as ``user`` (a signed name and random id)."""
        return self._devices.dumps([user, secrets.token_urlsafe(16)])

    def device_of(self, cookie: str, user: str) -> str | None:
        """The id of a device cookie this server signed for ``user`` within ``DEVICE_SECONDS``; None
        for none, a forged or expired one, or one of another user."""
        if not cookie or len(cookie) > 256:
            return None
        try:
            name, device = self._devices.loads(cookie, max_age=DEVICE_SECONDS)
        except (BadSignature, TypeError, ValueError):
            return None
        return str(device) if name == user else None

    def worker_pool(self, authorization: str) -> str | None:
        """The pool whose bearer token this is, or None."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for pool, expected in self._tokens.items():
            if hmac.compare_digest(expected.encode(), token.encode()):
                return pool
        return None


def _fingerprint(key: bytes, user: str, password: str) -> str:
    text = f"{user}\0{password}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, key=key, digest_size=16, person=b"qm-password").hexdigest()
