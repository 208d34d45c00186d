"""The Pulumi engine's side of a dynamic provider, in-process: the SDK's own provider host
(``pulumi/dynamic/__main__.py``, its ``DynamicResourceProviderServicer``) receives the protobuf
requests the engine sends, in the engine's order, and a small state file is kept between `up`s.

    engine = Engine(VerdaInstance)                # the resource class the pools declare
    engine.up(inputs)                            # first up: Check(olds={}, news) -> Create
    step = engine.up(inputs)                     # later: Check(old inputs, news) -> Diff(outputs, news)
    step.action == "same"                        # or "update" / "replace" (then Update / Create+Delete)
    engine.refresh()                             # Read(id, stored outputs); an empty id drops the state
    engine.destroy()                             # Delete(id, stored outputs)

What is faithful: inputs are built as the resource class builds them (its output names as None
inputs, which `rpc.serialize_properties` drops), the provider is pickled with the SDK's
``serialize_provider`` and unpickled by the host, numbers go through protobuf Structs (as floats),
Diff gets the stored OUTPUTS as olds, and secrets arrive unwrapped (the host tells the engine
``acceptSecrets: false``, so the engine strips them). What is not: no CLI, no plugin process.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import traceback
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import provider_pb2

from infra.providers.lifecycle import forget_replacements
from infra.providers.verda_api import forget_clients

PROVIDER_KEY = "__provider"
TYPE = "pulumi-python:dynamic:Resource"


def _load_host() -> Any:
    """The SDK's provider host module, without the ``main()`` call its last line makes (that would
    start a gRPC server and block)."""
    spec = importlib.util.find_spec("pulumi.dynamic.__main__")
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read(), spec.origin)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr) and ast.unparse(last) == "main()", "the host's layout changed"
    tree.body.pop()
    module: dict[str, Any] = {"__name__": "pulumi_dynamic_host", "__file__": spec.origin}
    exec(compile(tree, spec.origin, "exec"), module)
    return module


HOST = _load_host()


def new_provider_process() -> None:
    """What a provider process holds between calls (its API clients) is gone: the engine starts a new
    one for each `pulumi up`, `refresh` and `destroy`; so are the replacements its Diffs answered."""
    forget_clients()
    forget_replacements()


class HostError(Exception):
    """The host aborted the call (``context.abort``): the provider raised; the traceback is the text."""


class _Context:
    def abort(self, code: Any, details: str) -> None:
        raise HostError(details)

    def set_code(self, code: Any) -> None:
        return

    def set_details(self, details: str) -> None:
        return


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    """Properties as the engine sends them: serialized by the SDK (None values dropped)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rpc.serialize_properties(props, {}))
    finally:
        loop.close()


def plain(message: struct_pb2.Struct) -> dict[str, Any]:
    values = rpc.deserialize_properties(message)
    return {key: rpc.unwrap_rpc_secret(value) for key, value in values.items()}


@dataclass
class State:
    """What the engine keeps for the resource between runs."""

    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class Step:
    """What one `up` did: ``same``, ``create``, ``update`` or ``replace``; the Diff's answer."""

    action: str
    replaces: list[str] = field(default_factory=list)
    diff: Any = None


@dataclass
class Engine:
    """``shared_run``: this resource's `up`s are part of a run the test starts itself (with
    ``new_provider_process``), with other resources in the same provider process; otherwise each
    `up`, `refresh` and `destroy` is a run of its own."""

    resource: type
    name: str = "resource"
    state: State | None = None
    shared_run: bool = False
    servicer: Any = field(default_factory=lambda: HOST["DynamicResourceProviderServicer"]())
    replaced: list[State] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.provider = self.resource.provider_class()  # type: ignore[attr-defined]
        self.serialized = serialize_provider(self.provider)
        self.urn = f"urn:pulumi:stack::project::{TYPE}::{self.name}"

    def _run(self) -> None:
        if not self.shared_run:
            new_provider_process()

    def inputs(self, props: dict[str, Any]) -> dict[str, Any]:
        """The resource's inputs as its class registers them, with the pickled provider."""
        return {**props, **dict.fromkeys(self.provider.outputs), PROVIDER_KEY: self.serialized}

    def _call(self, method: str, request: Any) -> Any:
        return getattr(self.servicer, method)(request, _Context())

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        request = provider_pb2.CheckRequest(urn=self.urn, olds=struct(olds), news=struct(news))
        response = self._call("Check", request)
        failures = [(f.property, f.reason) for f in response.failures]
        if failures:
            raise HostError(f"check failed: {failures}")
        return plain(response.inputs)

    def _against_state(self, news: dict[str, Any]) -> dict[str, Any]:
        """What Diff and Update both send: the stored object (id, outputs, inputs) and the new inputs."""
        assert self.state is not None
        return {
            "id": self.state.id,
            "urn": self.urn,
            "olds": struct(self.state.outputs),
            "news": struct(news),
            "old_inputs": struct(self.state.inputs),
        }

    def diff(self, news: dict[str, Any]) -> Any:
        return self._call("Diff", provider_pb2.DiffRequest(**self._against_state(news)))

    def replaced_with_unknown(self, keys: list[str]) -> list[str]:
        """Before a delete-before-replace of a resource this one depends on, the engine asks the
        provider's Diff whether this one must be replaced too, with the inputs taken from the replaced
        resource unknown (``rpc.UNKNOWN``) and the rest as stored: the keys it would replace for."""
        assert self.state is not None
        news = {**self.state.inputs, **dict.fromkeys(keys, rpc.UNKNOWN)}
        return list(self.diff(news).replaces)

    def create(self, inputs: dict[str, Any]) -> State:
        response = self._call("Create", provider_pb2.CreateRequest(urn=self.urn, properties=struct(inputs)))
        return State(response.id, inputs, plain(response.properties))

    def update(self, news: dict[str, Any]) -> State:
        response = self._call("Update", provider_pb2.UpdateRequest(**self._against_state(news)))
        assert self.state is not None
        return State(self.state.id, news, plain(response.properties))

    def delete(self, state: State) -> None:
        request = provider_pb2.DeleteRequest(
            id=state.id, urn=self.urn, properties=struct(state.outputs), old_inputs=struct(state.inputs)
        )
        self._call("Delete", request)

    def up(self, props: dict[str, Any], in_a_run: bool = False) -> Step:
        """One `pulumi up` of this resource with ``props`` as the program declares them. ``in_a_run``:
        one step of an `up` of many resources, which deletes what a create-before-delete replacement
        replaced only at its end (the test calls ``delete_replaced`` then)."""
        self._run()
        news = self.inputs(props)
        if self.state is None:
            self.state = self.create(self.check({}, news))
            return Step("create")
        checked = self.check(self.state.inputs, news)
        diff = self.diff(checked)
        if diff.changes != proto.DiffResponse.DIFF_SOME:
            return Step("same", diff=diff)
        replaces = list(diff.replaces)
        if not replaces:
            self.state = self.update(checked)
            return Step("update", diff=diff)
        old = self.state
        if diff.deleteBeforeReplace:
            self.delete(old)
            self.state = self.create(checked)
        else:
            self.state = self.create(checked)
            self.replaced.append(old)
            if not in_a_run:
                self.delete_replaced()
        return Step("replace", replaces, diff)

    def delete_replaced(self) -> None:
        """The end of a run: a create-before-delete replacement's old object is deleted only once every
        resource of the run was created or updated (the engine's delete-replaced steps come last, so the
        resources naming the old object have moved to the new one)."""
        while self.replaced:
            self.delete(self.replaced.pop())

    def refresh(self) -> None:
        """`pulumi refresh`: Read with the stored outputs; an empty id means the object is gone."""
        assert self.state is not None
        self._run()
        request = provider_pb2.ReadRequest(
            id=self.state.id,
            urn=self.urn,
            properties=struct(self.state.outputs),
            inputs=struct(self.state.inputs),
        )
        response = self._call("Read", request)
        if not response.id:
            self.state = None
            return
        self.state = State(response.id, self.state.inputs, plain(response.properties))

    def destroy(self) -> None:
        assert self.state is not None
        self._run()
        self.delete(self.state)
        self.state = None


def explain(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error))
