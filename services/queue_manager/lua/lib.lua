-- Shared helpers, prepended to every script. ARGV[1] is the key prefix (see keys.py).
local P = ARGV[1]
local SEGMENT = 1e13  -- one priority level of the schedule score
local ROUND = 1e9     -- one fair round inside a priority level; seq stays below this

local function k(...)
  return P .. ':' .. table.concat({...}, ':')
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- Set by the evening's save before it takes the snapshot: any change after that of what
-- participants have (a save, a submit, a cancel, a deletion, a priority, a catalogue approval)
-- would be lost with the Redis, so each script that makes one refuses it ({'closed'}) in the same step.
local function closed()
  return redis.call('EXISTS', k('closed')) == 1
end

local function job_fields(id, ...)
  return redis.call('HMGET', k('job', id), ...)
end

-- submit.lua sets this while it hands the new job to a waiting worker itself.
local quiet_wakes = false

local function wake(scope)
  if not quiet_wakes then
    redis.call('PUBLISH', k('wake'), scope)
  end
end

-- Tell a job's owner (every process's ``EventBus`` listens): ``event`` is a UserEvent as a table
-- or, already encoded, as a JSON string. Publishing writes nothing to the AOF.
local function publish_event(user, event)
  if type(event) == 'table' then
    event = cjson.encode(event)
  end
  redis.call('PUBLISH', k('events'), '{"user":' .. cjson.encode(user) .. ',"event":' .. event .. '}')
end

-- Tell a job's owner the events a worker forwarded: ARGV[first..], UserEvent JSON payloads, in
-- order (touch.lua for an ``/events`` call, finish.lua for those a completion or failure carries);
-- and keep on the job the nodes ComfyUI reused, which those events said (cached_json, '' = none).
local function publish_forwarded(key, user, cached_json, first)
  if cached_json ~= '' then
    redis.call('HSET', key, 'cached', cached_json)
  end
  local owner = cjson.encode(user)
  for i = first, #ARGV do
    redis.call('PUBLISH', k('events'), '{"user":' .. owner .. ',"event":' .. ARGV[i] .. '}')
  end
end

local function clamp_priority(p)
  return math.max(-100, math.min(100, p))
end

-- A job's priority level: in priority mode its own priority plus its owner's (admin-set) one,
-- else 0.
local function level_of(mode, user, priority)
  if mode ~= 'priority' then
    return 0
  end
  return clamp_priority(tonumber(priority) + tonumber(redis.call('HGET', k('user_priority'), user) or '0'))
end

-- A job's schedule score at the priority level it has now (level_of); its place inside the level
-- (round, number) is kept.
local function score_at_level(mode, user, priority, score)
  return fmt((100 - level_of(mode, user, priority)) * SEGMENT + tonumber(score) % SEGMENT)
end

-- Put a job (back) into its scope's queue at its schedule score.
local function enqueue(id, user, scope, score)
  redis.call('ZADD', k('queue', scope), score, id)
  redis.call('SADD', k('scopes'), scope)
  redis.call('SADD', k('user', user, 'queued'), id)
  redis.call('HSET', k('job', id), 'state', 'queued', 'worker_id', '', 'lease_expires', '')
  wake(scope)
end

-- A queued job a busy worker has prepared (claimed ahead, inputs fetched) holds its hold in
-- hold_token/hold_worker/hold_expires; it stays in its queue, so anything that takes it from there
-- (an idle worker's claim, a cancel) ends the hold, and the preparer's next start finds it gone.
local function clear_hold(id)
  local key = k('job', id)
  local worker = redis.call('HGET', key, 'hold_worker')
  if worker and worker ~= '' then
    local wkey = k('worker', worker)
    if redis.call('HGET', wkey, 'next_id') == id then
      redis.call('HSET', wkey, 'next_id', '')
    end
    redis.call('HSET', key, 'hold_token', '', 'hold_worker', '', 'hold_expires', '')
  end
end

-- The job a worker has prepared and still holds (nil when none): its hash names it in next_id.
local function holding_of(worker_id)
  local next_id = redis.call('HGET', k('worker', worker_id), 'next_id')
  if next_id and next_id ~= '' and redis.call('HGET', k('job', next_id), 'hold_worker') == worker_id then
    return next_id
  end
  return nil
end

-- Whether a worker is shutting down (drain.lua): it starts nothing more, and nothing is held for it.
local function draining(worker_id)
  return redis.call('HGET', k('worker', worker_id), 'state') == 'draining'
end

-- A hold ends while its job stays queued: the job is nobody's, and a claim ahead waiting in its
-- scope (a busy worker's, which passed the job by as held) is woken to prepare it.
local function end_hold(id)
  clear_hold(id)
  wake(redis.call('HGET', k('job', id), 'scope'))
end

-- A worker that will not start the job held for it (it claims again, registers again, drains,
-- leaves or is gone) ends that hold (end_hold). Returns the job's id (nil when none).
local function end_hold_of(worker_id)
  local held = holding_of(worker_id)
  if held then
    end_hold(held)
  end
  return held
end

-- A worker's running job was ended for it (reap.lua, at its pool's maximum job time): its GPU is
-- free once ComfyUI stops the job, which a hung node may not do for the interrupt grace, and its
-- heartbeats, which renewed its hold, are refused from now on. Its hold lapses now rather than a
-- lease later: any worker of the pool may prepare the job at once (a claim ahead waiting in its
-- scope is woken), and this worker still starts it if nobody has taken it by the time it is free.
local function lapse_hold_of(worker_id, now)
  local held = holding_of(worker_id)
  if held then
    redis.call('HSET', k('job', held), 'hold_expires', now)
    wake(redis.call('HGET', k('job', held), 'scope'))
  end
end

-- A worker's up time from from_ms to to_ms leaves its record (deregistered, or a gone record
-- forgotten or started anew): added to its pool's total in {p}:admin:left (the cost so far) and
-- kept as a span in {p}:admin:left_spans, scored by its end (the newest 1000), so the admin page's
-- busy fraction still counts the time within its hour (a GPU host's models sync, paid for too).
local function keep_up_time(pool, worker_id, from_ms, to_ms)
  local up = math.max(0, to_ms - from_ms)
  redis.call('HINCRBY', k('admin', 'left'), pool, up)
  local span = cjson.encode({pool = pool, worker_id = worker_id, from_ms = from_ms, to_ms = to_ms})
  redis.call('ZADD', k('admin', 'left_spans'), to_ms, span)
  redis.call('ZREMRANGEBYRANK', k('admin', 'left_spans'), 0, -1001)
end

-- An idle worker's claim named by its client (claim_id, '' = unnamed) leased job_id: kept on the
-- worker's record, so a repeat of the claim after a lost reply gets that lease again (claim.lua),
-- whichever step leased it (claim.lua, or submit.lua for a claim parked in the queue manager).
local function remember_claim(worker_id, claim_id, job_id)
  if claim_id ~= '' then
    redis.call('HSET', k('worker', worker_id), 'claim_id', claim_id, 'claimed', job_id)
  end
end

-- A job as claim.lua answers it: {id, queued_left (its scope's queue), HGETALL}.
local function as_claimed(job_id)
  local scope = redis.call('HGET', k('job', job_id), 'scope')
  return {job_id, redis.call('ZCARD', k('queue', scope)), redis.call('HGETALL', k('job', job_id))}
end

-- Take a job out of the waiting structures (queue or backoff).
local function dequeue(id, user, scope)
  redis.call('ZREM', k('queue', scope), id)
  redis.call('ZREM', k('delayed'), id)
  redis.call('SREM', k('user', user, 'queued'), id)
  clear_hold(id)
end

-- The owner runs one job fewer: a claim that passed her waiting jobs by at her running limit
-- (max_running_per_user, held_back) may take one now, so each of their scopes wakes a waiting claim
-- (else an idle GPU waited for its claim's next look, up to a second, while her job was there for
-- it). No claim passed her by: nothing wakes (each wake costs every queue manager process a look).
local function wake_waiting_of(user)
  if redis.call('SREM', k('held_back'), user) == 0 then
    return
  end
  local woken = {}
  for _, id in ipairs(redis.call('SMEMBERS', k('user', user, 'queued'))) do
    local scope = redis.call('HGET', k('job', id), 'scope')
    if scope and not woken[scope] then
      woken[scope] = true
      wake(scope)
    end
  end
end

-- End whatever lease a job holds; the worker goes back to idle (a draining one stays draining).
-- The job's id goes out on {p}:ended: a push dispatcher carrying the job frees its slot at once.
local function end_lease(id, user, worker_id)
  redis.call('ZREM', k('leases'), id)
  redis.call('PUBLISH', k('ended'), id)
  redis.call('SREM', k('user', user, 'running'), id)
  wake_waiting_of(user)
  if worker_id and worker_id ~= '' then
    local wkey = k('worker', worker_id)
    local f = redis.call('HMGET', wkey, 'job_id', 'state')
    if f[1] == id then
      redis.call('HSET', wkey, 'state', f[2] == 'draining' and 'draining' or 'idle', 'job_id', '')
    end
  end
end

-- A finished job keeps its record for the retention, then expires.
local function finish(id, state, now, retention_ms)
  local key = k('job', id)
  redis.call('HSET', key, 'state', state, 'finished_at', now, 'token', '', 'lease_expires', '')
  redis.call('PEXPIRE', key, retention_ms)
  redis.call('ZADD', k('finished'), now, id)
end

local function dead_letter(id, now, retention_ms, error_json)
  redis.call('HSET', k('job', id), 'dead', '1', 'error', error_json)
  redis.call('ZADD', k('dead'), now, id)
  finish(id, 'failed', now, retention_ms)
end

-- Requeue after a failed attempt: straight back in line, or once a backoff is over.
local function retry_later(id, user, scope, score, due, now)
  if due <= now then
    enqueue(id, user, scope, score)
    return
  end
  redis.call('HSET', k('job', id), 'state', 'queued', 'worker_id', '', 'lease_expires', '')
  redis.call('SADD', k('user', user, 'queued'), id)
  redis.call('ZADD', k('delayed'), due, id)
end

local function backoff_ms(attempts, base_ms, max_ms)
  return math.min(max_ms, base_ms * 2 ^ math.max(0, attempts - 1))
end

-- The lowest schedule score of the user's queued jobs (math.huge when none): the next of hers due.
-- ``skip`` (optional): a set of job ids not counted (rejoin.lua: those it has still to move).
local function first_queued_score(user, skip)
  local first = math.huge
  for _, id in ipairs(redis.call('SMEMBERS', k('user', user, 'queued'))) do
    if not (skip and skip[id]) then
      first = math.min(first, tonumber(redis.call('HGET', k('job', id), 'score')) or math.huge)
    end
  end
  return first
end

-- Queued jobs ahead of one with this score: its own scope, plus unpinned work for a pinned job.
local function position(scope, score)
  local bound = '(' .. fmt(score)
  local ahead = redis.call('ZCOUNT', k('queue', scope), '-inf', bound)
  if scope ~= '*' then
    ahead = ahead + redis.call('ZCOUNT', k('queue', '*'), '-inf', bound)
  end
  return ahead
end

-- Whether another worker holds a prepared job (a hold with `mine` as token is not another's).
local function held_by_other(id, mine, now)
  local f = redis.call('HMGET', k('job', id), 'hold_token', 'hold_expires')
  return f[1] and f[1] ~= '' and f[1] ~= mine and tonumber(f[2] or '0') > now
end

-- The queued job a worker of `pool` runs next: the lowest score across its pool's queue and the
-- unpinned one, skipping owners at the running limit. Returns id, score, scope (nil when none).
-- With `now`, jobs other workers hold prepared are skipped (a hold with token `mine` is not):
-- that is what a busy worker may prepare, or start. Without, holds do not count: an idle
-- worker takes a prepared job from a busy one.
local function next_eligible(pool, max_running, scan_limit, mine, now)
  local function eligible(id, user)
    if now and held_by_other(id, mine, now) then
      return false
    end
    if max_running <= 0 or redis.call('SCARD', k('user', user, 'running')) < max_running then
      return true
    end
    redis.call('SADD', k('held_back'), user)  -- the end of one of her running jobs wakes claims
    return false
  end

  local function first_eligible(qkey)
    local start = 0
    while start < scan_limit do
      local batch = redis.call('ZRANGE', qkey, start, start + 63, 'WITHSCORES')
      if #batch == 0 then
        return nil
      end
      for i = 1, #batch, 2 do
        local user = redis.call('HGET', k('job', batch[i]), 'user')
        if user and eligible(batch[i], user) then
          return batch[i], tonumber(batch[i + 1])
        end
      end
      start = start + 64
    end
    return nil
  end

  local best, best_score, best_scope = nil, nil, nil
  local scopes = {pool, '*'}
  if pool == '*' then
    scopes = {'*'}
  end
  for _, scope in ipairs(scopes) do
    local id, score = first_eligible(k('queue', scope))
    if id and (best_score == nil or score < best_score) then
      best, best_score, best_scope = id, score, scope
    end
  end
  return best, best_score, best_scope
end

-- Start-time fair queueing, per queue (scope) and priority level: a user's next job goes one
-- round after her previous one, but never before the round this queue dispatches at that level
-- now (fair:queue_round, moved on by lease_job), so a newcomer neither jumps the ring nor waits
-- behind every job of someone who queued many. The round a busy pool or level dispatches elsewhere
-- does not move this queue's. `segment`: the score's priority segment, 100 - level.
local function queue_round_field(scope, segment)
  return fmt(segment) .. ':' .. scope
end

local function next_round(user, scope, segment)
  local current = tonumber(redis.call('HGET', k('fair:queue_round'), queue_round_field(scope, segment)) or '0')
  local last = tonumber(redis.call('HGET', k('fair:user_round'), user) or '-1')
  local round = math.min(9999, math.max(last + 1, current))
  redis.call('HSET', k('fair:user_round'), user, round)
  return round
end

-- A job of `scope` at `score` is dispatched: its queue and level (and the whole queue manager,
-- fair:round) dispatch its round now.
local function dispatched_round(scope, score)
  local round = math.floor((score % SEGMENT) / ROUND)
  local field = queue_round_field(scope, math.floor(score / SEGMENT))
  if round > tonumber(redis.call('HGET', k('fair:queue_round'), field) or '-1') then
    redis.call('HSET', k('fair:queue_round'), field, round)
  end
  if round > tonumber(redis.call('GET', k('fair:round')) or '0') then
    redis.call('SET', k('fair:round'), round)
  end
  return round
end

-- Lease job `id` (found by next_eligible at `score` in `scope`) to a worker. Returns
-- {id, queued_left, HGETALL of the job} and publishes the owner's 'started' event.
local function lease_job(id, score, scope, worker_id, token, now, lease_ms)
  local key = k('job', id)
  local user = redis.call('HGET', key, 'user')
  dequeue(id, user, scope)
  redis.call('SADD', k('user', user, 'running'), id)
  local expires = now + lease_ms
  local attempt = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'state', 'leased', 'token', token, 'worker_id', worker_id,
    'started_at', now, 'lease_expires', expires, 'ran_at', '')
  redis.call('ZADD', k('leases'), expires, id)
  redis.call('HSET', k('worker', worker_id), 'state', 'busy', 'job_id', id, 'last_seen', now)
  redis.call('ZADD', k('workers'), now, worker_id)
  local round = dispatched_round(scope, score)
  if round > tonumber(redis.call('HGET', k('fair:user_served'), user) or '-1') then
    redis.call('HSET', k('fair:user_served'), user, round)  -- what a cancel gives back stops here (cancel.lua)
  end
  local left = redis.call('ZCARD', k('queue', scope))
  if left > 0 then
    wake(scope)  -- more work: wake the next waiting claim too
  end
  local job_pool = redis.call('HGET', key, 'pool')
  if not job_pool or job_pool == '' then
    job_pool = cjson.null
  end
  publish_event(user, {type = 'started', job_id = id,
    data = {worker_id = worker_id, attempt = attempt, pool = job_pool}})
  return {id, left, redis.call('HGETALL', key)}
end

-- A busy worker prepares its next job: it holds the first job no other worker holds, which stays
-- queued (its owner sees it waiting; an idle worker may still take it) until start.lua starts it.
local function hold_next(pool, worker_id, token, now, lease_ms, max_running, scan_limit)
  local best, _, best_scope = next_eligible(pool, max_running, scan_limit, '', now)
  if not best then
    return {}
  end
  redis.call('HSET', k('job', best), 'hold_token', token, 'hold_worker', worker_id,
    'hold_expires', now + lease_ms)
  redis.call('HSET', k('worker', worker_id), 'next_id', best)
  return {best, redis.call('ZCARD', k('queue', best_scope)), redis.call('HGETALL', k('job', best))}
end

-- Lease the next job a worker of `pool` may run (claim.lua; submit.lua for a waiting worker), or
-- with `prepare` hold it for a busy worker. Returns {} when nothing is eligible, else
-- {id, queued_left, HGETALL of the job}. A draining worker (drain.lua) is leased and held nothing:
-- it starts no job more, so the job stays queued for the others.
local function claim_next(pool, worker_id, token, now, lease_ms, max_running, scan_limit, prepare)
  if redis.call('EXISTS', k('paused')) == 1 or draining(worker_id) then
    return {}
  end
  if prepare then
    return hold_next(pool, worker_id, token, now, lease_ms, max_running, scan_limit)
  end
  local best, best_score, best_scope = next_eligible(pool, max_running, scan_limit)
  if not best then
    return {}
  end
  return lease_job(best, best_score, best_scope, worker_id, token, now, lease_ms)
end

-- The job held for a worker to run after the one it was just leased: what a prepare-claim with no
-- wait would hold now (claim.lua for an idle worker's claim, start.lua), in the same step as that
-- lease. {} when next_token is '' (not asked) or nothing is left for the worker now.
local function hold_after(pool, worker_id, next_token, now, lease_ms, max_running, scan_limit)
  if next_token == '' then
    return {}
  end
  return claim_next(pool, worker_id, next_token, now, lease_ms, max_running, scan_limit, true)
end
