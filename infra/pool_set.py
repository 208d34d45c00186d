"""Every configured GPU pool, each with its own worker token, built through the kind registry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import pulumi
import pulumi_random as random

from infra.pools import PoolComponent, PoolConfig, PoolContext, kind_of
from infra.pools.context import SharedVolumes
from infra.pools.worker_image import WorkerImages


class PoolSet(pulumi.ComponentResource):
    """Builds the pools; ``tokens`` (pool -> bearer token) and ``summaries`` feed the queue manager.
    The worker image and each models volume are declared here once for all the pools that use them."""

    pools: dict[str, PoolComponent]
    tokens: dict[str, pulumi.Output[str]]
    capacity: dict[str, int]
    max_job_seconds: dict[str, int]

    def __init__(
        self,
        name: str,
        configs: Sequence[PoolConfig],
        context_for: Callable[[PoolConfig, pulumi.Output[str]], PoolContext],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("comfy-workshop:pools:PoolSet", name, None, opts)
        self.pools = {}
        self.tokens = {}
        self.capacity = {config.name: kind_of(config).capacity(config) for config in configs}
        self.max_job_seconds = {config.name: config.max_job_seconds for config in configs}
        images = WorkerImages(parent=self)  # pools pulling the same worker image share its build
        # Pools naming the same models volume share it.
        volumes = SharedVolumes(self, [kind_of(config).shared_volume(config) for config in configs])
        for config in configs:
            self.tokens[config.name] = self._token(name, config)
            warmup = json.dumps(config.warmup_workflow) if config.warmup_workflow else None
            context = dataclasses.replace(
                context_for(config, self.tokens[config.name]),
                images=images,
                shared=volumes,
                warmup_workflow=warmup,
            )
            self.pools[config.name] = kind_of(config).build(
                config, context, pulumi.ResourceOptions(parent=self)
            )
        self.register_outputs({"summaries": self.summaries()})

    def _token(self, name: str, config: PoolConfig) -> pulumi.Output[str]:
        """The pool's bearer token. ``tokenGeneration`` is its keeper: raising it replaces this
        token only (generation 0 has no keeper, so tokens made before it existed stay)."""
        generation = config.token_generation
        token = random.RandomPassword(
            f"{name}-{config.name}-token",
            length=40,
            special=False,
            keepers={"generation": str(generation)} if generation else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return pulumi.Output.secret(token.result)

    def summaries(self) -> pulumi.Output[list[dict[str, Any]]]:
        return pulumi.Output.all(*[pool.summary for pool in self.pools.values()]).apply(list)

    def tokens_json(self) -> pulumi.Output[str]:
        """`QM_WORKER_TOKENS`: JSON pool -> token, secret."""
        return pulumi.Output.secret(pulumi.Output.all(**self.tokens).apply(json.dumps))

    def queue_manager_env(self) -> dict[str, pulumi.Input[str]]:
        """Each pool's dispatch settings; ``QM_POOL_CAPACITY``: how many workers its token may keep
        registered follows from the jobs it runs at once; ``QM_POOL_MAX_JOB_SECONDS``: each pool's
        maximum job time (every kind's), which the queue manager enforces."""
        env: dict[str, pulumi.Input[str]] = {
            "QM_POOL_CAPACITY": json.dumps(self.capacity, sort_keys=True),
            "QM_POOL_MAX_JOB_SECONDS": json.dumps(self.max_job_seconds, sort_keys=True),
        }
        for pool in self.pools.values():
            env.update(pool.queue_manager_env)
        return env
