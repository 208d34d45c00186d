"""SSH keys, startup scripts and the shared filesystem: adopted by name, never duplicated."""

from __future__ import annotations

from typing import Any

import pytest

from infra.providers.lifecycle import ProviderError
from infra.providers.verda_host import SshKeyProvider, StartupScriptProvider
from infra.providers.verda_volume import SharedVolumeProvider
from tests.infra.providers.verda_double import VerdaDouble

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx organizer@laptop"


def test_ssh_key_create_is_idempotent(verda: VerdaDouble, creds: dict[str, Any]) -> None:
    props = {**creds, "name": "cw-workshop", "public_key": KEY}

    first = SshKeyProvider().create(props)
    second = SshKeyProvider().create(props)

    assert first.id == second.id
    assert [k["key"] for k in verda.ssh_keys.values()] == [KEY]


def test_startup_script_5xx_after_storing_is_adopted(verda: VerdaDouble, creds: dict[str, Any]) -> None:
    verda.fail("POST", "/scripts", status=500, when="after")

    result = StartupScriptProvider().create({**creds, "name": "cw-h100", "script": "#!/bin/bash\necho hi\n"})

    assert list(verda.scripts) == [result.id]


def test_startup_script_change_replaces_and_delete_confirms(
    verda: VerdaDouble, creds: dict[str, Any]
) -> None:
    props = {**creds, "name": "cw-h100", "script": "#!/bin/bash\necho one\n"}
    provider = StartupScriptProvider()
    result = provider.create(props)

    assert provider.diff(result.id, result.outs, {**props, "script": "#!/bin/bash\n"}).replaces == ["script"]
    provider.delete(result.id, result.outs)
    assert verda.scripts == {}


@pytest.fixture
def volume_props(creds: dict[str, Any]) -> dict[str, Any]:
    return {**creds, "name": "cw-models", "size": 500, "location": "FIN-03"}


def test_shared_volume_is_created_ready_with_its_mount_command(
    verda: VerdaDouble, volume_props: dict[str, Any]
) -> None:
    result = SharedVolumeProvider().create(volume_props)

    [volume] = verda.live_volumes()
    assert volume["type"] == "NVMe_Shared" and volume["status"] == "detached"
    assert result.outs["mount_command"].startswith("mount -t nfs")


def test_next_mornings_create_adopts_yesterdays_models_volume(
    verda: VerdaDouble, volume_props: dict[str, Any]
) -> None:
    yesterday = SharedVolumeProvider().create(volume_props)

    today = SharedVolumeProvider().create(volume_props)

    assert today.id == yesterday.id and len(verda.live_volumes()) == 1


def test_a_failed_volume_create_keeps_what_may_hold_models(
    verda: VerdaDouble, volume_props: dict[str, Any]
) -> None:
    verda.fail("GET", "/volumes/vol-.*", status=400, code="invalid_request", message="bad", when="before")

    with pytest.raises(ProviderError, match="bad"):
        SharedVolumeProvider().create(volume_props)

    assert len(verda.live_volumes()) == 1
    assert SharedVolumeProvider().create(volume_props).id == verda.live_volumes()[0]["id"]


def test_volume_grows_in_place_and_refuses_to_shrink(
    verda: VerdaDouble, volume_props: dict[str, Any]
) -> None:
    provider = SharedVolumeProvider()
    made = provider.create(volume_props)

    assert provider.diff(made.id, made.outs, {**volume_props, "size": 800}).replaces == []
    provider.update(made.id, made.outs, {**volume_props, "size": 800})
    assert verda.live_volumes()[0]["size"] == 800
    with pytest.raises(ProviderError, match=r"800 GB.*cannot shrink.*sizeGb to 800 .*\(it is 100 now\)"):
        provider.update(made.id, {**volume_props, "size": 800}, {**volume_props, "size": 100})
