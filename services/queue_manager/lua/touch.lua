-- Renew a lease (heartbeat or events from its holder). ARGV: prefix, id, token, now_ms, lease_ms,
-- running ('1' when the worker reports the job has started).
-- Returns {'ok', expires_ms, cancel, user, became_running} | {'stale'}.
local id, token = ARGV[2], ARGV[3]
local now, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local key = k('job', id)
local f = redis.call('HMGET', key, 'state', 'token', 'cancel', 'user', 'worker_id')
local state = f[1]
if (state ~= 'leased' and state ~= 'running') or f[2] ~= token then
  return {'stale'}
end
local expires = now + lease_ms
redis.call('ZADD', k('leases'), expires, id)
redis.call('HSET', key, 'lease_expires', expires)
local became_running = 0
if ARGV[6] == '1' and state == 'leased' then
  redis.call('HSET', key, 'state', 'running')
  became_running = 1
end
redis.call('HSET', k('worker', f[5]), 'last_seen', now)
redis.call('ZADD', k('workers'), now, f[5])
return {'ok', expires, f[3], f[4], became_running}
