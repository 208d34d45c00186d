"""One credential registry: the pre-flight check, the workflows and the README are written from it."""

from __future__ import annotations

import pytest
import yaml

from devkit.harness import REPO
from infra import credential_registry
from infra.credential_registry import ALL, markdown_table
from tests.support.stack_config import problems


def test_the_readme_table_is_the_registry() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- credentials:begin -->\n", 1)[1].split("<!-- credentials:end -->", 1)[0]

    assert table == markdown_table(), "run `python -m infra.credential_registry` and paste its table"


@pytest.mark.parametrize("workflow", ["deploy", "preview"])
def test_the_workflows_pass_every_credential_from_the_repository_secrets(workflow: str) -> None:
    jobs = yaml.safe_load((REPO / ".github" / "workflows" / f"{workflow}.yml").read_text())["jobs"]
    [job] = jobs.values()

    for credential in ALL:
        assert job["env"].get(credential.env) == f"${{{{ secrets.{credential.env} }}}}", credential.key


def test_the_deploy_workflow_joins_the_tailnet_before_pulumi_runs() -> None:
    steps = yaml.safe_load((REPO / ".github" / "workflows" / "deploy.yml").read_text())["jobs"]["deploy"][
        "steps"
    ]
    uses = [step.get("uses", "") for step in steps]

    joins = next(i for i, name in enumerate(uses) if name.startswith("tailscale/github-action"))
    assert joins < next(i for i, name in enumerate(uses) if name.startswith("pulumi/actions"))
    assert steps[joins]["with"]["tags"] == "tag:ci"


def test_a_missing_credential_names_its_command_variable_and_where_to_get_it() -> None:
    text = problems("workshop", {"pools": [{"kind": "verda-instance", "name": "gpu"}]}, without={
        "comfy-workshop:verdaClientId"
    })  # fmt: skip

    assert "comfy-workshop:verdaClientId" in text and "required setting (Verda API client id)" in text
    assert "pulumi config set 'comfy-workshop:verdaClientId'" in text and "VERDA_CLIENT_ID" in text
    assert "Verda cloud console" in text


def test_a_credential_from_the_environment_satisfies_the_pre_flight_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")

    assert credential_registry.satisfied(credential_registry.RUNPOD_API_KEY)
