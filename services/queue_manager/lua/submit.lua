-- Queue a new job. ARGV: prefix, id, user, scope, pool, priority, mode, max_queued, now_ms,
-- max_attempts, spec_json, front, [pool, worker_id, token, now_ms, lease_ms, max_running_per_user,
-- scan_limit, claim_id]. front = '1' is ComfyUI's ``front``: the job goes just before the owner's
-- first waiting job (her share of the GPUs stays the same) and its number is negative, as in
-- ComfyUI. The bracketed part, optional, is a claim parked in this queue manager, as
-- claim.lua takes it (its pool is the worker's, its now_ms the submit's; claim_id: the id its
-- client named it by, '' = none, kept with the lease so that a repeat of the claim gets it again).
-- Returns {'ok', position, user's unfinished jobs, HGETALL, claimed} | {'closed'} | {'exists'} |
-- {'limit', queued};
-- on 'ok' the owner's 'queued' event is already published (before any claim can say 'started').
-- With a parked claim, its worker is leased the next job in the same step (one AOF fsync for
-- submit and dispatch instead of two in a row): ``claimed`` is claim.lua's answer ({} = none).
local id, user, scope, pool = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local priority, mode = tonumber(ARGV[6]), ARGV[7]
local max_queued, now = tonumber(ARGV[8]), ARGV[9]
local key = k('job', id)
if closed() then
  return {'closed'}
end
if redis.call('EXISTS', key) == 1 then
  return {'exists'}
end
local queued = redis.call('SCARD', k('user', user, 'queued'))
if queued >= max_queued then
  return {'limit', queued}
end
local number = redis.call('INCR', k('seq'))  -- the job's queue number (ComfyUI's "number")
local seq = number % ROUND
local level = level_of(mode, user, priority)
local round = 0
if mode ~= 'fifo' then
  round = next_round(user, scope, 100 - level)
end
local score = (100 - level) * SEGMENT + round * ROUND + seq
if ARGV[12] == '1' then
  score = math.min(score, first_queued_score(user) - 1)
  number = -number
end
redis.call('HSET', key, 'id', id, 'user', user, 'scope', scope, 'pool', pool, 'priority', priority,
  'state', 'queued', 'attempts', 0, 'max_attempts', ARGV[10], 'queued_at', now, 'score', fmt(score),
  'spec', ARGV[11], 'cancel', '0', 'dead', '0', 'token', '', 'done_token', '', 'number', fmt(number))
redis.call('ZADD', k('user', user, 'jobs'), now, id)
redis.call('SADD', k('users'), user)
local handing_over = ARGV[13] ~= nil and ARGV[13] ~= ''  -- the parked claim's pool
quiet_wakes = handing_over
enqueue(id, user, scope, fmt(score))
quiet_wakes = false
local unfinished = queued + 1 + redis.call('SCARD', k('user', user, 'running'))
local place = position(scope, score)
publish_event(user, {type = 'queued', job_id = id, data = {position = place, queue_remaining = unfinished}})
local record = redis.call('HGETALL', key)
local claimed = {}
if handing_over then
  claimed = claim_next(ARGV[13], ARGV[14], ARGV[15], tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18]),
    tonumber(ARGV[19]))
  if #claimed > 0 then
    remember_claim(ARGV[14], ARGV[20] or '', claimed[1])
  end
  if redis.call('ZCARD', k('queue', scope)) > 0 then
    wake(scope)  -- the new job still waits (another was due first, or nothing was eligible)
  end
end
return {'ok', place, unfinished, record, claimed}
