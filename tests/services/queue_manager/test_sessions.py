"""Sessions live on the server: logout and the admin end them for good. Logins are rate-limited per
name and per address, and every password check does the same work whether or not the user exists
or logged in before (counted argon2 verifications, never timed)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

from services.queue_manager.main import create_app
from tests.support.qm_api import ADMIN, ADMIN_PASSWORD, PASSWORDS, basic, make_settings

ADA_LOGIN = {"user": "ada", "password": "ada-password"}


def client_for(app: FastAPI, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://qm.test")


async def logged_in(app: FastAPI) -> tuple[httpx.AsyncClient, str]:
    client = client_for(app)
    reply = await client.post("/api/auth/login", json=ADA_LOGIN)
    assert reply.status_code == 200
    return client, reply.cookies["qm_session"]


async def me_with(app: FastAPI, cookie: str) -> int:
    async with client_for(app) as fresh:
        fresh.cookies.set("qm_session", cookie)
        return (await fresh.get("/api/auth/me")).status_code


async def test_a_logged_out_cookie_no_longer_logs_anyone_in(app: FastAPI) -> None:
    client, cookie = await logged_in(app)
    assert await me_with(app, cookie) == 200
    assert (await client.post("/api/auth/logout")).status_code == 204
    assert await me_with(app, cookie) == 401  # a copy of the cookie (stolen, or another tab) is dead too
    await client.aclose()


async def test_the_cookie_is_http_only_and_same_site_strict(app: FastAPI) -> None:
    async with client_for(app) as client:
        reply = await client.post("/api/auth/login", json=ADA_LOGIN)
    flags = reply.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags


async def test_the_admin_ends_every_session_of_one_participant(app: FastAPI) -> None:
    (laptop, first), (phone, second) = await logged_in(app), await logged_in(app)
    async with client_for(app) as bob, client_for(app) as admin:
        await bob.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
        assert (await bob.delete("/api/admin/users/ada/sessions")).status_code == 403
        ended = await admin.delete("/api/admin/users/ada/sessions", headers=ADMIN)
        assert ended.json() == {"user": "ada", "ended": 2}
        assert await me_with(app, first) == 401 and await me_with(app, second) == 401
        assert (await bob.get("/api/auth/me")).status_code == 200  # others stay logged in
    await laptop.aclose()
    await phone.aclose()


@pytest.fixture
async def limited_app(redis_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(redis_url, login_failures_per_user=3, login_failures_per_address=5)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_too_many_wrong_passwords_for_one_name_get_429_with_retry_after(limited_app: FastAPI) -> None:
    async with client_for(limited_app, "10.0.0.1") as first:
        for _ in range(3):
            wrong = await first.post("/api/auth/login", json={"user": "ada", "password": "guess"})
            assert wrong.status_code == 401
        refused = await first.post("/api/auth/login", json=ADA_LOGIN)  # even the right one: no oracle
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 300
        assert "try again in" in refused.json()["detail"]
        assert (
            await first.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
        ).is_success


async def test_a_hostile_participant_guessing_a_name_cannot_lock_its_owner_out(redis_url: str) -> None:
    """Bob guesses ada's password until he is refused, from his own address: ada, logging in for the
    first time from hers, still gets in (the lock holds only where the guesses come from)."""
    settings = make_settings(redis_url, login_failures_per_user=3, login_failures_per_address=5)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        client_for(app, "10.0.1.1") as bob,
        client_for(app, "10.0.1.2") as ada,
    ):
        statuses = [
            (await bob.post("/api/auth/login", json={"user": "ada", "password": f"g{n}"})).status_code
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        assert (await ada.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200


async def test_a_lock_on_a_shared_address_lets_a_browser_that_logged_in_before_through(
    redis_url: str,
) -> None:
    """The whole room shares one address (NAT). Yesterday ada logged in on her laptop; this morning
    (a restarted queue manager) bob uses up the room's failed logins for her name and for the
    address: ada's laptop still logs in, while a browser that never did, and one that carries
    another participant's device cookie, are refused."""
    settings = make_settings(redis_url, login_failures_per_user=3, login_failures_per_address=5)
    yesterday = create_app(settings)
    async with yesterday.router.lifespan_context(yesterday), client_for(yesterday, "10.0.2.1") as laptop:
        assert (await laptop.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200
        device = laptop.cookies["qm_device"]
    today = create_app(settings)
    async with today.router.lifespan_context(today):
        async with client_for(today, "10.0.2.1") as bob:
            assert (
                await bob.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
            ).is_success
            bobs_device = bob.cookies["qm_device"]
            for n in range(6):
                await bob.post("/api/auth/login", json={"user": "ada", "password": f"guess-{n}"})
            assert (await bob.post("/api/auth/login", json=ADA_LOGIN)).status_code == 429
        async with client_for(today, "10.0.2.1") as fresh:
            assert (await fresh.post("/api/auth/login", json=ADA_LOGIN)).status_code == 429
        async with client_for(today, "10.0.2.1") as borrowed:
            borrowed.cookies.set("qm_device", bobs_device)
            assert (await borrowed.post("/api/auth/login", json=ADA_LOGIN)).status_code == 429
        async with client_for(today, "10.0.2.1") as laptop:
            laptop.cookies.set("qm_device", device)
            reply = await laptop.post("/api/auth/login", json=ADA_LOGIN)
            assert reply.status_code == 200, reply.text
            assert (await laptop.get("/api/auth/me")).json()["user"] == "ada"


async def test_a_stolen_device_cookie_still_gets_only_a_few_guesses(redis_url: str) -> None:
    settings = make_settings(redis_url, login_failures_per_user=3, login_failures_per_address=50)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with client_for(app, "10.0.3.1") as laptop:
            assert (await laptop.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200
            device = laptop.cookies["qm_device"]
        async with client_for(app, "10.0.3.2") as thief:
            thief.cookies.set("qm_device", device)
            statuses = [
                (await thief.post("/api/auth/login", json={"user": "ada", "password": f"g{n}"})).status_code
                for n in range(4)
            ]
            assert statuses == [401, 401, 401, 429]


async def test_the_device_cookie_is_http_only_same_site_and_names_no_one_readably(app: FastAPI) -> None:
    async with client_for(app) as client:
        reply = await client.post("/api/auth/login", json=ADA_LOGIN)
    device = [c for c in reply.headers.get_list("set-cookie") if c.startswith("qm_device=")]
    assert len(device) == 1
    assert "httponly" in device[0].lower() and "samesite=strict" in device[0].lower()


async def test_one_guesser_in_the_room_locks_out_no_one_but_the_names_he_guessed(
    limited_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workshop room shares one address (the venue's NAT). One person there fails many logins:
    typos for her own name, guesses for bob's, a spray of made-up names far past the address's
    count. Ada, logging in for the first time from that room, still gets in; only the names that
    failed there are held back there (bob still logs in from elsewhere). Past the address's count a
    made-up name costs no argon2 any more, and answers as a wrong password does (401, not 429)."""
    counter = CountingVerify(monkeypatch)
    async with client_for(limited_app, "10.0.0.3") as room, client_for(limited_app, "10.0.0.4") as home:
        for name in [f"made-up-{n}" for n in range(8)] + ["bob"] * 3:
            assert (
                await room.post("/api/auth/login", json={"user": name, "password": "x"})
            ).status_code == 401
        before = counter.calls
        sprayed = await room.post("/api/auth/login", json={"user": "made-up-9", "password": "x"})
        assert sprayed.status_code == 401 and counter.calls == before
        assert (
            sprayed.json() == (await home.post("/api/auth/login", json={"user": "z", "password": "x"})).json()
        )
        assert (await room.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200
        assert (
            await room.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
        ).status_code == 429
        assert (
            await home.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
        ).status_code == 200


async def test_guessing_through_http_basic_is_limited_too(limited_app: FastAPI) -> None:
    async with client_for(limited_app, "10.0.0.5") as guesser:
        for _ in range(3):
            assert (await guesser.get("/api/auth/me", headers=basic("ada", "guess"))).status_code == 401
        refused = await guesser.get("/api/auth/me", headers=basic("ada", "ada-password"))
        assert refused.status_code == 429 and "retry-after" in refused.headers


class CountingVerify:
    """Counts argon2 verifications made by the queue manager (the expensive step of a login)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = PasswordHasher.verify

        def verify(hasher: PasswordHasher, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(hasher, *args, **kwargs)

        monkeypatch.setattr(PasswordHasher, "verify", verify)


async def verifications(counter: CountingVerify, client: httpx.AsyncClient, login: dict[str, str]) -> int:
    before = counter.calls
    reply = await client.post("/api/auth/login", json=login)
    assert reply.status_code == 401
    return counter.calls - before


async def test_every_wrong_login_costs_one_argon2_whether_or_not_the_user_exists_or_logged_in(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingVerify(monkeypatch)
    async with client_for(app) as client:
        unknown = await verifications(counter, client, {"user": "nobody", "password": "guess"})
        known_fresh = await verifications(counter, client, {"user": "ada", "password": "guess"})
        assert (await client.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200
        known_after_login = await verifications(counter, client, {"user": "ada", "password": "guess"})
        admin_wrong = await verifications(counter, client, {"user": "admin", "password": "guess"})
    async with client_for(app) as fresh:
        basic_before = counter.calls
        assert (await fresh.get("/api/auth/me", headers=basic("bob", "guess"))).status_code == 401
        basic_wrong = counter.calls - basic_before
    assert unknown == known_fresh == known_after_login == admin_wrong == basic_wrong == 1


@pytest.mark.parametrize(
    "header", [b"Basic \xc3\xa9t\xc3\xa9", b"Basic \xff\xfe", b"Basic " + base64.b64encode(b"\xff:\xfe")]
)
async def test_http_basic_credentials_that_are_no_text_get_401_not_500(app: FastAPI, header: bytes) -> None:
    """Whoever sends them (no login needed): a header of non-ASCII bytes, or base64 of non-UTF-8 ones."""
    async with client_for(app) as client:
        reply = await client.get("/api/auth/me", headers={"Authorization": header})
    assert reply.status_code == 401 and "log in" in reply.json()["detail"], reply.text


async def test_a_changed_password_ends_the_sessions_opened_with_the_old_one(redis_url: str) -> None:
    """The organizer changes a leaked password (config, then ``pulumi up`` restarts the queue
    manager): whoever logged in with the old one is logged out, everyone else stays logged in."""
    before = create_app(make_settings(redis_url))
    async with before.router.lifespan_context(before):
        ada, ada_cookie = await logged_in(before)
        async with client_for(before) as bob, client_for(before) as admin:
            await bob.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
            await admin.post("/api/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD})
            bob_cookie, admin_cookie = bob.cookies["qm_session"], admin.cookies["qm_session"]
        await ada.aclose()
    passwords = {**PASSWORDS, "ada": "a-new-password"}
    after = create_app(make_settings(redis_url, participants=passwords, admin_password="new-admin-pw"))
    async with after.router.lifespan_context(after):
        assert await me_with(after, ada_cookie) == 401
        assert await me_with(after, admin_cookie) == 401
        assert await me_with(after, bob_cookie) == 200
        async with client_for(after) as again:
            relogged = await again.post("/api/auth/login", json={"user": "ada", "password": "a-new-password"})
            assert relogged.status_code == 200
            assert (await again.get("/api/auth/me")).json()["user"] == "ada"


async def test_a_session_of_a_former_admin_name_is_no_admin_session(redis_url: str) -> None:
    """The organizer moves the admin to another name (``adminUser``) and the old name becomes a
    participant, with the same password (reused, or a copy-paste): the old admin session must not
    keep the admin's routes for that participant; it is over, and she logs in again as herself."""
    before = create_app(make_settings(redis_url))
    async with before.router.lifespan_context(before), client_for(before) as admin:
        await admin.post("/api/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD})
        admin_cookie = admin.cookies["qm_session"]
    passwords = {**PASSWORDS, "admin": ADMIN_PASSWORD}
    after = create_app(make_settings(redis_url, participants=passwords, admin_user="organizer"))
    async with after.router.lifespan_context(after), client_for(after) as old:
        old.cookies.set("qm_session", admin_cookie)
        assert (await old.get("/api/admin/workers")).status_code == 401
        assert (await old.get("/api/auth/me")).status_code == 401


async def test_a_removed_participants_session_logs_no_one_in(redis_url: str) -> None:
    """The organizer removes ada from the workshop (config, then the queue manager restarts): her
    session cookie, and her password over HTTP Basic, log no one in; bob stays logged in."""
    before = create_app(make_settings(redis_url))
    async with before.router.lifespan_context(before):
        ada, ada_cookie = await logged_in(before)
        async with client_for(before) as bob:
            await bob.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
            bob_cookie = bob.cookies["qm_session"]
        await ada.aclose()
    after = create_app(make_settings(redis_url, participants={"bob": PASSWORDS["bob"]}))
    async with after.router.lifespan_context(after):
        assert await me_with(after, ada_cookie) == 401
        assert await me_with(after, bob_cookie) == 200
        async with client_for(after) as client:
            assert (await client.get("/api/auth/me", headers=basic("ada", "ada-password"))).status_code == 401


async def test_logging_in_ends_the_session_the_browser_had(app: FastAPI) -> None:
    """A shared laptop: bob logged in, then ada logs in on the same browser. Bob's session ends with
    it (a copy of his cookie logs no one in), and ada's cookie is a new one, never one the browser
    brought (a cookie planted beforehand names no session of hers)."""
    async with client_for(app) as laptop:
        await laptop.post("/api/auth/login", json={"user": "bob", "password": "bob-password"})
        bobs = laptop.cookies["qm_session"]
        assert (await laptop.post("/api/auth/login", json=ADA_LOGIN)).status_code == 200
        adas = laptop.cookies["qm_session"]
    assert adas != bobs
    assert await me_with(app, bobs) == 401
    assert await me_with(app, adas) == 200
