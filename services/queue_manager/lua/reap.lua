-- Maintenance pass: expired leases go back to the queue after a backoff (or to the dead letters
-- once attempts are used up); a job that has held a registered worker's GPU longer than that
-- worker's pool allows ends however its worker renews it (failed for good, in the dead letters;
-- cancelled when its owner had asked); due backoffs rejoin their queue; old index entries are pruned.
-- ARGV: prefix, now_ms, retention_ms, backoff_base_ms, backoff_max_ms, batch, lease_error_json,
-- default_limit_ms, default_limit_error_json, pool_limits...
-- default_limit_ms and its JobTimeLimit error are a pool's that pool_limits does not name (the
-- error names the pool where it says {pool}); pool_limits...: pool, limit_ms, error_json per
-- pool with its own. Push requests' jobs are the dispatcher's to time (no registered worker).
-- Returns a flat list {id, user, outcome, ...} with outcome 'requeued' | 'delayed' | 'dead' |
-- 'cancelled' | 'overrun'.
local now, retention_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local base_ms, max_ms, batch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}

local function touched(id, user, outcome)
  table.insert(out, id)
  table.insert(out, user)
  table.insert(out, outcome)
end

local function expire_lease(id)
  local key = k('job', id)
  local f = redis.call('HMGET', key, 'attempts', 'max_attempts', 'cancel', 'user', 'scope', 'score',
    'worker_id')
  local user = f[4]
  if not user then
    redis.call('ZREM', k('leases'), id)
    return
  end
  -- Its worker is gone if this was its job still; one that runs another now (it claimed again
  -- after the reply to this lease was lost, or registered again) is alive. A gone worker starts
  -- nothing more: the job held for it is nobody's from now on. One told to stop stays draining, so
  -- that a claim of its is still leased nothing (claim_next in lib.lua).
  local wkey = f[7] and f[7] ~= '' and k('worker', f[7])
  local gone = wkey and redis.call('HGET', wkey, 'job_id') == id
  local stopping = gone and draining(f[7])
  end_lease(id, user, f[7])
  if gone then
    redis.call('HSET', wkey, 'state', stopping and 'draining' or 'gone', 'job_id', '')
    end_hold_of(f[7])
  end
  redis.call('HSET', key, 'token', '')
  local outcome
  if f[3] == '1' then
    finish(id, 'cancelled', now, retention_ms)
    outcome = 'cancelled'
  elseif tonumber(f[1]) >= tonumber(f[2]) then
    dead_letter(id, now, retention_ms, ARGV[7])
    outcome = 'dead'
  else
    retry_later(id, user, f[5], f[6], now + backoff_ms(tonumber(f[1]), base_ms, max_ms), now)
    outcome = 'delayed'
  end
  touched(id, user, outcome)
end

-- pool -> {limit_ms, error_json}
local limits = {}
for i = 10, #ARGV, 3 do
  limits[ARGV[i]] = {tonumber(ARGV[i + 1]), ARGV[i + 2]}
end

-- The maximum job time of a worker's pool, and the JobTimeLimit error that names it.
local function limit_of(pool)
  local own = limits[pool]
  if own then
    return own[1], own[2]
  end
  -- the pool's name as a JSON string's inside, '%' doubled for gsub ('{pool}' holds no pattern character)
  local named = string.gsub(string.sub(cjson.encode(pool), 2, -2), '%%', '%%%%')
  return tonumber(ARGV[8]), (string.gsub(ARGV[9], '{pool}', named))
end

-- End a lease past its worker's pool's maximum job time as finish.lua ends an 'overrun' (one whose
-- ComfyUI was done with it in time, ran_at, holds no GPU: its outputs are on their way): the
-- worker's later report of it is a repeat ('again'), its next heartbeat is refused, and the job it
-- holds prepared is free for others at once (lapse_hold_of in lib.lua).
local function end_overrun(id)
  local key = k('job', id)
  local f = redis.call('HMGET', key, 'state', 'token', 'started_at', 'worker_id', 'user', 'cancel', 'ran_at')
  if (f[1] ~= 'leased' and f[1] ~= 'running') or not f[2] or f[2] == '' or not f[3] or not f[4] or f[4] == '' then
    return
  end
  if f[7] and f[7] ~= '' then
    return
  end
  local pool = redis.call('HGET', k('worker', f[4]), 'pool')
  if not pool or pool == '' then
    return
  end
  local limit_ms, error_json = limit_of(pool)
  if now - tonumber(f[3]) < limit_ms then
    return
  end
  end_lease(id, f[5], f[4])
  lapse_hold_of(f[4], now)
  redis.call('HSET', key, 'token', '', 'done_token', f[2])
  if f[6] == '1' then
    redis.call('HSET', key, 'error', error_json)
    finish(id, 'cancelled', now, retention_ms)
  else
    dead_letter(id, now, retention_ms, error_json)
  end
  touched(id, f[5], 'overrun')
end

local expired = 0
local leased = redis.call('ZRANGE', k('leases'), 0, -1, 'WITHSCORES')
for i = 1, #leased, 2 do
  if tonumber(leased[i + 1]) <= now and expired < batch then
    expired = expired + 1
    expire_lease(leased[i])
  else
    end_overrun(leased[i])
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('delayed'), '-inf', now, 'LIMIT', 0, batch)) do
  redis.call('ZREM', k('delayed'), id)
  local f = redis.call('HMGET', k('job', id), 'user', 'scope', 'score', 'state')
  if f[1] and f[4] == 'queued' then
    enqueue(id, f[1], f[2], f[3])
    touched(id, f[1], 'requeued')
  end
end
redis.call('ZREMRANGEBYSCORE', k('finished'), '-inf', now - retention_ms)
redis.call('ZREMRANGEBYSCORE', k('dead'), '-inf', now - retention_ms)
return out
