-- A worker leaves for good (a GPU host's models sync that finished). ARGV: prefix, worker_id,
-- parked_ms (the longest a claim it sent before may still wait: QM_CLAIM_WAIT_MAX_SECONDS), now_ms.
-- The time it was up (registered to now) is kept (keep_up_time): the host was paid for, and the
-- admin page's cost so far and busy fraction keep it.
-- Its record and its place in the workers list go, and a job still held (prepared) for it is given
-- back in the same step (still queued, first in line for any worker, no attempt counted), so the
-- admin never sees a job held for a worker that is not listed. A worker running a job stays.
-- For parked_ms its record says only 'draining' (no pool: every route takes it for unknown), so a
-- claim of its still parked, in any process, is leased nothing and ends at once, as a draining
-- worker's does (claim_next in lib.lua), rather than be handed a job by a submit: that job would
-- sit leased to a worker that is gone, an attempt spent, until the lease lapsed. A register ends it.
-- Returns {'gone', the job given back ('' = none)} | {'busy', its job's id}: finish or release it first.
local worker_id = ARGV[2]
local key = k('worker', worker_id)
local job_id = redis.call('HGET', key, 'job_id')
if job_id and job_id ~= '' then
  return {'busy', job_id}
end
local held = end_hold_of(worker_id)
local up = redis.call('HMGET', key, 'pool', 'registered_at')
if up[1] and up[2] then
  keep_up_time(up[1], worker_id, tonumber(up[2]), tonumber(ARGV[4]))
end
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'draining')
redis.call('PEXPIRE', key, ARGV[3])
redis.call('ZREM', k('workers'), worker_id)
return {'gone', held or ''}
