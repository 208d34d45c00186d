"""Every committed stack file evaluates end to end under mocks and exports what organizers read."""

from __future__ import annotations

import pytest

from devkit.harness import VAULT_SECRET_OUTPUTS, run_stack, stack_names


def test_the_three_stacks_are_committed() -> None:
    assert stack_names() == ["local", "vault", "workshop"]


@pytest.mark.parametrize("stack", ["vault", "workshop", "local"])
def test_each_committed_stack_evaluates(stack: str) -> None:
    run = run_stack(stack)
    assert run.resources, f"{stack} declared nothing"
    names = [r.urn for r in run.resources]
    assert len(names) == len(set(names)), "two resources share a URN"


@pytest.mark.parametrize("stack", ["workshop", "local"])
def test_platform_stacks_export_urls_credentials_and_pools(stack: str) -> None:
    run = run_stack(stack)
    base = "https://workshop.example.org" if stack == "workshop" else "http://localhost:8080"
    assert run.outputs["platformUrl"] == f"{base}/"
    assert run.outputs["adminUrl"] == f"{base}/admin/"
    users = ["user01", "user02"] if stack == "workshop" else ["alice", "bob"]
    assert run.outputs["participantUrls"] == {user: f"{base}/w/{user}/" for user in users}
    assert "credentials" in run.secret_outputs
    assert set(run.outputs["credentials"]["participants"]) == set(users)
    assert [pool["name"] for pool in run.outputs["pools"]] == (
        ["baseline", "burst"] if stack == "workshop" else ["cpu"]
    )


def test_the_workshop_shows_a_hybrid_of_pull_and_push_pools() -> None:
    pools = {pool["name"]: pool for pool in run_stack("workshop").outputs["pools"]}
    assert (pools["baseline"]["kind"], pools["baseline"]["mode"]) == ("verda-instance", "pull")
    assert (pools["burst"]["kind"], pools["burst"]["mode"]) == ("verda-serverless", "push")
    assert pools["burst"]["capacity"] == 6


def test_vault_secrets_are_exported_as_secrets() -> None:
    run = run_stack("vault")
    assert set(VAULT_SECRET_OUTPUTS) <= run.secret_outputs
    assert "participantNames" not in run.secret_outputs
    assert len(run.outputs["participantNames"]) == 20


@pytest.mark.parametrize("stack", ["vault", "workshop", "local"])
def test_each_stack_previews_with_unknown_provider_outputs(stack: str) -> None:
    # What the pull-request workflow's `pulumi preview` does: no apply on unknown values may fail.
    planned = run_stack(stack, preview=True)
    deployed = run_stack(stack)
    assert {r.urn for r in planned.resources} == {r.urn for r in deployed.resources}
