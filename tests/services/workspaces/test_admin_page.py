"""The admin page and its figures, behind the admin login."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.queue_manager.admin.stats import costs
from services.queue_manager.registry import WorkerInfo
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, LiveServer, login, run_on_worker


@pytest.fixture
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield login(client, ADMIN, ADMIN_PASSWORD)


def test_the_admin_page_is_only_for_the_admin(admin: httpx.Client, alice: httpx.Client, app_factory) -> None:  # type: ignore[no-untyped-def]
    assert app_factory().get("/admin/", follow_redirects=False).headers["location"] == "/w/login?next=/admin/"
    assert alice.get("/admin/", follow_redirects=False).status_code == 303
    assert alice.get("/admin/api/stats").status_code == 403
    page = admin.get("/admin/")
    assert (
        page.status_code == 200 and "Dead letters" in page.text and "http" not in page.text.split("<body>")[1]
    )
    assert admin.get("/admin/app.js").headers["content-type"].startswith("text/javascript")


def test_stats_count_finished_jobs_busy_gpus_and_cost(
    admin: httpx.Client, alice: httpx.Client, worker: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QM_GPU_PRICES", '{"gpu": 3.6}')
    alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"}).raise_for_status()
    first = admin.get("/admin/api/stats").json()
    assert first["samples"][-1]["queued"] == 1 and first["samples"][-1]["workers"] == 1
    run_on_worker(worker, [])
    stats = admin.get("/admin/api/stats").json()
    assert len(stats["jobs_per_minute"]) == 60 and stats["jobs_per_minute"][-1] == 1
    assert set(stats["cost_by_pool"]) == {"gpu"}
    assert {p["user"] for p in stats["participants"]} == {"alice", "bob"}
    assert 0.0 <= stats["busy_share"] <= 1.0


def test_a_bad_price_setting_names_the_variable_and_the_fix(
    admin: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.queue_manager.settings import Settings

    monkeypatch.setenv("QM_GPU_PRICES", "h100=2")
    with pytest.raises(ValueError, match=r'\{"h100": 2.29\}'):
        Settings(env="development")


def test_cost_is_each_workers_registered_hours_times_its_pools_price() -> None:
    now = datetime.now(UTC)
    caps = {"pool": "h100", "provider": "verda"}
    workers = [
        WorkerInfo.model_validate(
            {
                "worker_id": f"w{i}",
                "state": "idle",
                "job_id": None,
                "capabilities": caps,
                "registered_at": now - timedelta(hours=hours),
                "last_seen": now,
            }
        )
        for i, hours in enumerate((2, 0.5))
    ]
    assert costs(workers, {"h100": 3.6}) == {"h100": 9.0}
    assert costs(workers, {}) == {"h100": 0.0}
