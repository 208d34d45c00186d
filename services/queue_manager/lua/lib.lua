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

local function job_fields(id, ...)
  return redis.call('HMGET', k('job', id), ...)
end

local function wake(scope)
  redis.call('PUBLISH', k('wake'), scope)
end

-- Tell a job's owner (every process's ``EventBus`` listens): ``event`` is a UserEvent as a table
-- or, already encoded, as a JSON string. Publishing writes nothing to the AOF.
local function publish_event(user, event)
  if type(event) == 'table' then
    event = cjson.encode(event)
  end
  redis.call('PUBLISH', k('events'), '{"user":' .. cjson.encode(user) .. ',"event":' .. event .. '}')
end

local function clamp_priority(p)
  return math.max(-100, math.min(100, p))
end

-- Put a job (back) into its scope's queue at its schedule score.
local function enqueue(id, user, scope, score)
  redis.call('ZADD', k('queue', scope), score, id)
  redis.call('SADD', k('scopes'), scope)
  redis.call('SADD', k('user', user, 'queued'), id)
  redis.call('HSET', k('job', id), 'state', 'queued', 'worker_id', '', 'lease_expires', '')
  wake(scope)
end

-- Take a job out of the waiting structures (queue or backoff).
local function dequeue(id, user, scope)
  redis.call('ZREM', k('queue', scope), id)
  redis.call('ZREM', k('delayed'), id)
  redis.call('SREM', k('user', user, 'queued'), id)
end

-- End whatever lease a job holds; the worker goes back to idle.
local function end_lease(id, user, worker_id)
  redis.call('ZREM', k('leases'), id)
  redis.call('SREM', k('user', user, 'running'), id)
  if worker_id and worker_id ~= '' then
    local wkey = k('worker', worker_id)
    if redis.call('HGET', wkey, 'job_id') == id then
      redis.call('HSET', wkey, 'state', 'idle', 'job_id', '')
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

-- Queued jobs ahead of one with this score: its own scope, plus unpinned work for a pinned job.
local function position(scope, score)
  local bound = '(' .. fmt(score)
  local ahead = redis.call('ZCOUNT', k('queue', scope), '-inf', bound)
  if scope ~= '*' then
    ahead = ahead + redis.call('ZCOUNT', k('queue', '*'), '-inf', bound)
  end
  return ahead
end
