"""Pulumi dynamic providers for clouds without a usable Pulumi package (decision 4 in docs/decisions.md).

Verda (through its SDK): ``verda_host`` (SSH keys, startup scripts), ``verda_volume`` (shared
filesystem), ``verda_instance`` (GPU instances), ``verda_containers`` (serverless deployments),
``verda_secrets`` (secrets, registry credentials). RunPod (REST API over httpx): ``runpod``.
All share ``lifecycle``: deterministic names, adopt-or-make, retries, confirmed clean-up.
"""
