-- Maintenance pass: expired leases go back to the queue after a backoff (or to the dead letters
-- once attempts are used up); due backoffs rejoin their queue; old index entries are pruned.
-- ARGV: prefix, now_ms, retention_ms, backoff_base_ms, backoff_max_ms, batch, lease_error_json.
-- Returns a flat list {id, user, outcome, ...} with outcome 'requeued' | 'delayed' | 'dead' | 'cancelled'.
local now, retention_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local base_ms, max_ms, batch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}

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
  table.insert(out, id)
  table.insert(out, user)
  table.insert(out, outcome)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('leases'), '-inf', now, 'LIMIT', 0, batch)) do
  expire_lease(id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('delayed'), '-inf', now, 'LIMIT', 0, batch)) do
  redis.call('ZREM', k('delayed'), id)
  local f = redis.call('HMGET', k('job', id), 'user', 'scope', 'score', 'state')
  if f[1] and f[4] == 'queued' then
    enqueue(id, f[1], f[2], f[3])
    table.insert(out, id)
    table.insert(out, f[1])
    table.insert(out, 'requeued')
  end
end
redis.call('ZREMRANGEBYSCORE', k('finished'), '-inf', now - retention_ms)
redis.call('ZREMRANGEBYSCORE', k('dead'), '-inf', now - retention_ms)
return out
