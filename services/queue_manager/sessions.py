"""Logins: server-side sessions and login rate limits in Redis, around ``auth.Authenticator``.

A session cookie carries only a random id. Redis keeps the session under the id's SHA-256
(``{p}:session:{digest}``: user and admin flag, expiring after ``QM_SESSION_HOURS``) and lists a
user's sessions (``{p}:user:{u}:sessions``), so logging out ends the session for good and the admin
can end every session of a participant at once (``DELETE /api/admin/users/{user}/sessions``).
Each session also keeps a keyed fingerprint of the password it was opened with: once the organizer
changes that password, the sessions opened with the old one no longer log anyone in.

Failed logins (the login form and HTTP Basic alike) are counted per user name at each client
address, and per client address (``{p}:login_failures:{kind}:{sha256}``), over
``QM_LOGIN_WINDOW_SECONDS``. Past ``QM_LOGIN_FAILURES_PER_USER`` for a name at an address, the next
attempt for that name from there gets 429 with ``Retry-After`` and is not even checked (so a right
guess is not told apart). A name is never locked everywhere: anyone could then lock its owner out
by guessing wrong (the passwords the program makes, 14 random letters and digits, are far beyond
guessing at this rate anyway).

A workshop room shares one address (the venue's NAT), so the address's own count locks no one:
one person's typos, or one attacker there, must not keep the room from logging in. What it bounds
is the work a guesser makes: past ``QM_LOGIN_FAILURES_PER_ADDRESS`` from an address, a name nobody
has is answered 401, as a wrong password is and after as long, without an argon2 verification. A
guesser there then makes at most ``QM_LOGIN_FAILURES_PER_USER`` verifications per real name per
window, and holds back only the names he guessed, only at that address. A browser that logged in
as that user before carries her device cookie (``auth.DEVICE_COOKIE``): its attempts count on that
device only, so even a name locked by others at her address does not hold it back, and a stolen
device cookie still gets only ``QM_LOGIN_FAILURES_PER_USER`` guesses. Every check of a password
that is not already known to be right costs one argon2 verification, run off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass

from services.queue_manager.auth import Authenticator, Principal
from services.queue_manager.keys import Keys
from services.queue_manager.redis_api import StrRedis
from services.queue_manager.scripts import EndSessionsArgs, Scripts
from services.queue_manager.settings import Settings

MAX_COOKIE_CHARS = 128


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Where a login attempt comes from: the client's address and the device cookie it sent."""

    address: str
    device_cookie: str = ""


class LoginRefused(Exception):
    """A login that is not even checked: too many failures for that name from that address."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed logins for this name from this address: try again in {retry_after} s "
            "(ask the organizer if you forgot your password)"
        )
        self.retry_after = retry_after


class Sessions:
    def __init__(self, redis: StrRedis, keys: Keys, scripts: Scripts, seconds: int) -> None:
        self.redis, self.keys, self.scripts, self.seconds = redis, keys, scripts, seconds

    async def open(self, principal: Principal, fingerprint: str) -> str:
        """A new session for ``principal``, who logged in with the password of this ``fingerprint``
        (``Authenticator.fingerprint``); the cookie value to hand the browser."""
        session_id = secrets.token_urlsafe(32)
        digest = _digest(session_id)
        key, listed = self.keys.session(digest), self.keys.user_sessions(principal.user)
        fields = {"user": principal.user, "admin": int(principal.admin), "password": fingerprint}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.seconds)
            pipe.sadd(listed, digest)
            pipe.expire(listed, self.seconds)
            await pipe.execute()
        return session_id

    async def principal(self, session_id: str) -> tuple[Principal, str | None] | None:
        """The session's principal and the fingerprint of the password it was opened with."""
        if not session_id or len(session_id) > MAX_COOKIE_CHARS:
            return None
        fields = await self.redis.hgetall(self.keys.session(_digest(session_id)))
        if not fields:
            return None
        return Principal(fields["user"], admin=fields.get("admin") == "1"), fields.get("password")

    async def close(self, session_id: str) -> None:
        """End one session (logout): its cookie no longer logs anyone in, here or in any process."""
        if session_id and len(session_id) <= MAX_COOKIE_CHARS:
            await self.scripts.run(EndSessionsArgs(self.keys.prefix, "", _digest(session_id)))

    async def revoke(self, user: str) -> int:
        """End every session of ``user``; how many there were."""
        return int(await self.scripts.run(EndSessionsArgs(self.keys.prefix, user)))


@dataclass(frozen=True)
class LoginLimits:
    per_user: int
    per_address: int
    window_seconds: int


class LoginGate:
    """Counts failed logins per user name at an address (or per device) and per client address."""

    def __init__(self, redis: StrRedis, keys: Keys, limits: LoginLimits) -> None:
        self.redis, self.keys, self.limits = redis, keys, limits

    def _name_counter(self, user: str, address: str, device: str | None) -> str:
        """A known device's own count; else the name's at this address."""
        if device is not None:
            return self.keys.login_failures("device", _digest(device))
        return self.keys.login_failures("user", _digest(f"{user}\0{address}"))

    def _address_counter(self, address: str) -> str:
        return self.keys.login_failures("address", _digest(address))

    async def check(self, user: str, address: str, device: str | None) -> bool:
        """Raise ``LoginRefused`` when this name failed too often lately from this address (or this
        device); else whether the address failed too often for any name (``Logins.check_password``
        then spares names nobody has their argon2)."""
        name_key, address_key = self._name_counter(user, address, device), self._address_counter(address)
        name_count, address_count = await self.redis.mget([name_key, address_key])
        if name_count is not None and int(name_count) >= self.limits.per_user:
            raise LoginRefused(max(int(await self.redis.ttl(name_key)), 1))
        return address_count is not None and int(address_count) >= self.limits.per_address

    async def failed(self, user: str, address: str, device: str | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self._name_counter(user, address, device), self._address_counter(address)):
                pipe.incr(key)
                pipe.expire(key, self.limits.window_seconds, nx=True)
            await pipe.execute()


class Logins:
    """Password checks with limits, and sessions: what the login routes and every dependency use."""

    def __init__(
        self, auth: Authenticator, redis: StrRedis, keys: Keys, scripts: Scripts, settings: Settings
    ) -> None:
        self.auth = auth
        self.sessions = Sessions(redis, keys, scripts, auth.session_seconds)
        limits = LoginLimits(
            settings.login_failures_per_user,
            settings.login_failures_per_address,
            settings.login_window_seconds,
        )
        self.gate = LoginGate(redis, keys, limits)

    async def check_password(self, user: str, password: str, caller: Caller) -> Principal | None:
        """The principal these credentials log in as, or None; ``LoginRefused`` past the limits."""
        known = self.auth.remembered(user, password)
        if known is not None:
            return known
        device = self.auth.device_of(caller.device_cookie, user)
        flooded = await self.gate.check(user, caller.address, device)
        if flooded and not self.auth.exists(user):
            await asyncio.sleep(self.auth.verify_seconds)  # as long as a check, without its work
            principal = None
        else:
            principal = await asyncio.to_thread(self.auth.login, user, password)
        if principal is None:
            await self.gate.failed(user, caller.address, device)
        return principal

    async def open_session(self, principal: Principal) -> str:
        """A new session; the (signed) cookie value that names it."""
        return self.auth.seal(await self.sessions.open(principal, self.auth.fingerprint(principal.user)))

    async def close_session(self, cookie: str) -> None:
        session_id = self.auth.unseal(cookie)
        if session_id is not None:
            await self.sessions.close(session_id)

    async def principal(
        self, authorization: str | None, cookie: str | None, caller: Caller
    ) -> Principal | None:
        """Who a request comes from: its session first, then HTTP Basic credentials."""
        session_id = self.auth.unseal(cookie) if cookie else None
        if session_id is not None:
            found = await self.sessions.principal(session_id)
            if found is not None and self.auth.known(*found):
                return found[0]
        credentials = self.auth.basic_credentials(authorization) if authorization else None
        if credentials is None:
            return None
        return await self.check_password(*credentials, caller)
