"""A push request's chain against the real Redis, call by call: the sequences the push model
(``test_push_model.py``) found, each kept as an explicit case."""

from __future__ import annotations

from services.protocol.jobs import JobState
from services.protocol.workers import Lease
from services.queue_manager.dispatch import PoolDispatcher, Remote
from services.queue_manager.push_requests import Chains
from services.queue_manager.settings import PushPool
from services.queue_manager.store import Store
from tests.support.push_model import Endpoint
from tests.support.qm_api import job

POOL = PushPool(name="push", style="runpod", url="http://127.0.0.1:9/v2/x", api_key="k", capacity=1,
                linger_seconds=0)  # fmt: skip
SLOT = "push-push-0"


async def first_request(store: Store, chains: Chains) -> tuple[str, Lease]:
    """A request the dispatcher opened for the queue's first job: its chain and that lease."""
    await store.submit("ada", job())
    lease = await store.claim(SLOT, POOL.name, behind=True)
    assert lease is not None
    chain, _ = await chains.open(POOL, SLOT, lease)
    return chain, lease


async def second_taken(store: Store, chains: Chains) -> tuple[str, Lease, Lease]:
    """A request whose container, done with its first job, took a second: chain, first, second."""
    chain, first = await first_request(store, chains)
    await store.submit("bob", job())
    taken = await chains.next(chain, POOL.name, first.token)
    assert taken is not None
    return chain, first, taken


async def test_a_repeat_of_next_answered_after_the_take_keeps_its_job_when_the_first_caller_left(
    store: Store,
) -> None:
    # The container's first `next` took a job; its connection broke before the reply went out, and
    # its repeat (the same `after`) came and got that job, as a repeat after a lost reply does. The
    # first call's handler then sees its caller gone: the job is the repeat's, running in the
    # container, so it must stay leased (given back, it would run a second time elsewhere).
    chains = Chains(store)
    chain, first, taken = await second_taken(store, chains)
    again = await chains.next(chain, POOL.name, first.token)
    assert again is not None and (again.job.id, again.token) == (taken.job.id, taken.token)

    await chains.leave(chain, first.token, taken)

    running = await store.get(taken.job.id)
    assert running is not None and running.state == JobState.LEASED and running.attempts == 1
    after = await store.claim("w-other", POOL.name)
    assert after is None, "the job the container runs was given to another"
    current = await chains.get(chain)
    assert current is not None and current.open and current.token == taken.token


async def test_a_take_whose_caller_left_with_no_repeat_gives_its_job_back_and_ends_the_request(
    store: Store,
) -> None:
    chains = Chains(store)
    chain, first, taken = await second_taken(store, chains)

    await chains.leave(chain, first.token, taken)

    back = await store.get(taken.job.id)
    assert back is not None and back.state == JobState.QUEUED and back.attempts == 0
    assert await chains.next(chain, POOL.name, first.token) is None  # the request is over


async def test_the_dispatcher_ends_a_request_whose_take_was_given_back_without_a_tokenless_report(
    store: Store,
) -> None:
    # The take whose caller left gave its job back and ended the chain (its record's token is '').
    # The dispatcher's next look at the request must not follow that job under the empty token (its
    # report was refused by the Failure model, a 5xx-style crash of the request's carrier): the job
    # it carried is still the request's first, which the provider says failed, so that one goes back.
    chains = Chains(store)
    chain, first = await first_request(store, chains)
    endpoint = Endpoint()
    dispatcher = PoolDispatcher(store, POOL, endpoint, "http://127.0.0.1:9")
    flight = await dispatcher._submit(first, chain, "reply-token")
    assert flight is not None
    await store.submit("bob", job())
    taken = await chains.next(chain, POOL.name, first.token)
    assert taken is not None
    await chains.leave(chain, first.token, taken)
    endpoint.state = Remote.FAILED

    assert await dispatcher._over(flight)

    given_back = await store.get(taken.job.id)
    assert given_back is not None and given_back.state == JobState.QUEUED and given_back.attempts == 0
    carried = await store.get(first.job.id)
    assert carried is not None and carried.state == JobState.QUEUED and carried.error is not None
    assert carried.error.type == "ProviderFailed"
