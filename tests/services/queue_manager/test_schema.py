"""Schemathesis fuzzes every documented route of a real queue manager process: bad input must
always get a 4xx (or a success), never a 5xx. Bounded: a few examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import not_a_server_error

from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import RedisServer
from tests.support.qm_api import ADMIN, GPU, PASSWORDS, TOKENS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qm_url(redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = qm_env(redis_proc.url, PASSWORDS, TOKENS, QM_CLAIM_WAIT_MAX_SECONDS="0.2")
    log = tmp_path_factory.mktemp("qm") / "qm.log"
    server = QueueManagerProcess(env, log_path=log).start()
    yield server.url
    server.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def api_schema(qm_url: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{qm_url}/openapi.json", headers=ADMIN)  # the admin's
    return schema.exclude(path="/api/admin/drain")  # waits by design; tested in test_admin_api


def credentials_for(path: str) -> dict[str, str]:
    return GPU if path.startswith(("/api/workers", "/api/leases")) else ADMIN


def fuzz(operation: schemathesis.APIOperation[Any, Any, Any, Any]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=credentials_for(case.path), checks=[not_a_server_error], timeout=10)

    run()


def test_no_input_makes_the_queue_manager_fail_with_a_server_error(
    api_schema: schemathesis.BaseSchema,
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    paths = {operation.path for operation in operations}
    assert {"/api/jobs", "/api/workers/{worker_id}/claim", "/api/leases/{job_id}/complete"} <= paths
    for operation in operations:
        fuzz(operation)


def test_sequences_of_calls_never_get_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    """Stateful: schemathesis chains calls by the links it infers (a submitted job's id into its
    cancel, a registered worker's id into its claim...), each call with its scope's credentials."""
    machine = api_schema.as_state_machine()
    server_errors: list[str] = []  # every 5xx seen, whatever hypothesis makes of the run afterwards

    class Calls(machine):  # type: ignore[valid-type,misc]
        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"headers": credentials_for(case.path), "timeout": 10}

        def validate_response(self, response: Any, case: schemathesis.Case[Any], *_: Any, **__: Any) -> None:
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}")
            case.validate_response(response, checks=[not_a_server_error])

    # The machine draws from what the live server answered (ids, links), and the server's state moves
    # on between examples, so hypothesis may find that a replayed prefix draws differently and call
    # the strategy flaky (FlakyStrategyDefinition). Like schemathesis's own runner, start a fresh
    # session then; a 5xx cannot hide behind it, since every one is recorded above.
    for _ in range(3):
        try:
            Calls.run(
                settings=settings(
                    max_examples=25, stateful_step_count=6, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
            )  # fmt: skip
            break
        except FlakyStrategyDefinition:
            continue
    else:
        pytest.fail("three sessions in a row ended in FlakyStrategyDefinition")
    assert not server_errors, server_errors
