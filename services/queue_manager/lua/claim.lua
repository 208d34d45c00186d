-- Lease the next job for a worker of `pool`. ARGV: prefix, pool, worker_id, token, now_ms,
-- lease_ms, max_running_per_user (0 = none), scan_limit.
-- Returns {} when nothing is eligible, else {id, queued_left, HGETALL of the job}; the owner's
-- 'started' event is published here, in the same step.
local pool, worker_id, token = ARGV[2], ARGV[3], ARGV[4]
local now, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_running, scan_limit = tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', k('paused')) == 1 then
  return {}
end

local function eligible(user)
  return max_running <= 0 or redis.call('SCARD', k('user', user, 'running')) < max_running
end

-- The first job in this queue whose owner is under the running limit.
local function first_eligible(qkey)
  local start = 0
  while start < scan_limit do
    local batch = redis.call('ZRANGE', qkey, start, start + 63, 'WITHSCORES')
    if #batch == 0 then
      return nil
    end
    for i = 1, #batch, 2 do
      local user = redis.call('HGET', k('job', batch[i]), 'user')
      if user and eligible(user) then
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
if not best then
  return {}
end

local key = k('job', best)
local user = redis.call('HGET', key, 'user')
dequeue(best, user, best_scope)
redis.call('SADD', k('user', user, 'running'), best)
local expires = now + lease_ms
local attempt = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'leased', 'token', token, 'worker_id', worker_id,
  'started_at', now, 'lease_expires', expires)
redis.call('ZADD', k('leases'), expires, best)
redis.call('HSET', k('worker', worker_id), 'state', 'busy', 'job_id', best, 'last_seen', now)
redis.call('ZADD', k('workers'), now, worker_id)
local round = math.floor((best_score % SEGMENT) / ROUND)
if round > tonumber(redis.call('GET', k('fair:round')) or '0') then
  redis.call('SET', k('fair:round'), round)
end
local left = redis.call('ZCARD', k('queue', best_scope))
if left > 0 then
  wake(best_scope)  -- more work: wake the next waiting claim too
end
local job_pool = redis.call('HGET', key, 'pool')
if not job_pool or job_pool == '' then
  job_pool = cjson.null
end
publish_event(user, {type = 'started', job_id = best,
  data = {worker_id = worker_id, attempt = attempt, pool = job_pool}})
return {best, left, redis.call('HGETALL', key)}
