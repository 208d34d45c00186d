"""The workshop stack's window onto the vault: a StackReference with one typed accessor per output."""

from __future__ import annotations

from typing import Any, cast

import pulumi


class VaultOutputs:
    """Read-only view of the vault stack's outputs; secret outputs stay secret."""

    def __init__(self, stack_name: str) -> None:
        self.ref = pulumi.StackReference("vault", stack_name=stack_name)

    def _get(self, key: str) -> pulumi.Output[Any]:
        return self.ref.require_output(key)

    def _secret(self, key: str) -> pulumi.Output[Any]:
        return pulumi.Output.secret(self.ref.require_output(key))

    @property
    def participant_names(self) -> pulumi.Output[list[str]]:
        return cast(pulumi.Output[list[str]], self._get("participantNames"))

    @property
    def admin_user(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._get("adminUser"))

    @property
    def participant_passwords(self) -> pulumi.Output[dict[str, str]]:
        return cast(pulumi.Output[dict[str, str]], self._secret("participantPasswords"))

    @property
    def admin_password(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._secret("adminPassword"))

    @property
    def session_secret(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._secret("sessionSecret"))

    @property
    def r2(self) -> pulumi.Output[dict[str, dict[str, str]]]:
        return cast(pulumi.Output[dict[str, dict[str, str]]], self._get("r2"))

    @property
    def models_read(self) -> pulumi.Output[dict[str, str]]:
        return cast(pulumi.Output[dict[str, str]], self._secret("modelsReadCredentials"))

    @property
    def user_files(self) -> pulumi.Output[dict[str, str]]:
        return cast(pulumi.Output[dict[str, str]], self._secret("userFilesCredentials"))

    @property
    def origin_certificate(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._get("originCertificate"))

    @property
    def origin_private_key(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._secret("originPrivateKey"))

    @property
    def deploy_public_key(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._get("deployPublicKey"))

    @property
    def deploy_private_key(self) -> pulumi.Output[str]:
        return cast(pulumi.Output[str], self._secret("deployPrivateKey"))
