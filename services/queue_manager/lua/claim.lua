-- Lease the next job for a worker of `pool`. ARGV: prefix, pool, worker_id, token, now_ms,
-- lease_ms, max_running_per_user (0 = none), scan_limit, prepare ('1' when the worker is busy and
-- prepares its next job: the job is held for it, not leased; hold_next in lib.lua), next_token,
-- claim_id. next_token (an idle worker's claim): also hold the job after the one it leases, under
-- this token, as start.lua does ('' = hold nothing); claim_id (an idle worker's claim): the id its
-- client sends again when it repeats the call after a lost reply ('' = none).
-- Returns {} when nothing is eligible, else {id, queued_left, HGETALL of the job, held}; held is
-- {} or the job held after it, {id, queued_left, HGETALL}; 'draining' when the worker is shutting
-- down (drain.lua): it is leased and held nothing, and its claim, parked before the drain too, ends
-- at once (a wake it took goes on to the next waiter). A lease publishes the owner's 'started'
-- event in the same step. (The logic is ``claim_next`` in lib.lua: submit.lua runs it too, to hand
-- a new job straight to a waiting worker.)
-- A claim first ends any hold the worker still has: a worker holds one job at most, and one that
-- claims is not going to start the job it held (an idle worker's claim leases another; a claim
-- ahead is only sent while the worker holds nothing). A claim of either kind repeated after its
-- reply was lost holds that job again, rather than leave it held for a token nobody has until the
-- hold expires (busy workers would pass it by meanwhile, though it is first in line).
local pool, worker_id, token = ARGV[2], ARGV[3], ARGV[4]
local now, lease_ms, max_running, scan = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8])
local prepare, next_token, claim_id = ARGV[9] == '1', ARGV[10] or '', ARGV[11] or ''
end_hold_of(worker_id)
-- A claim repeated after its reply was lost (the same claim_id) gets the lease the first one made
-- again, same token and attempt, while that job is still leased to the worker (whether this script
-- or a submit leased it: remember_claim in lib.lua): the worker never had it, so rather than wait
-- leased to nobody until the lease expires, it runs now.
local function first_answer()
  local f = redis.call('HMGET', k('worker', worker_id), 'claim_id', 'claimed')
  if claim_id == '' or prepare or f[1] ~= claim_id then
    return nil
  end
  local job = redis.call('HMGET', k('job', f[2]), 'state', 'worker_id')
  if (job[1] == 'leased' or job[1] == 'running') and job[2] == worker_id then
    redis.call('HSET', k('worker', worker_id), 'claim_repeated', claim_id)  -- forget_claim.lua
    return as_claimed(f[2])
  end
  return nil
end

local claimed = first_answer()
if not claimed and draining(worker_id) then
  for _, scope in ipairs({pool, '*'}) do
    if redis.call('ZCARD', k('queue', scope)) > 0 then
      wake(scope)
    end
  end
  return 'draining'
end
claimed = claimed or claim_next(pool, worker_id, token, now, lease_ms, max_running, scan, prepare)
if #claimed == 0 or prepare then
  return claimed
end
remember_claim(worker_id, claim_id, claimed[1])
claimed[4] = hold_after(pool, worker_id, next_token, now, lease_ms, max_running, scan)
return claimed
