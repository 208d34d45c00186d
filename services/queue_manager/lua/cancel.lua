-- Cancel a job. ARGV: prefix, id, owner ('' = admin, any owner), now_ms, retention_ms.
-- Returns {'cancelled', user} (was waiting: removed) | {'requested', user} (running: its worker's
-- waiting heartbeat is answered at once through {p}:cancels) | {'finished', user} | {'missing'}.
local id, owner, now, retention_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local key = k('job', id)
local f = redis.call('HMGET', key, 'state', 'user', 'scope')
local state, user = f[1], f[2]
if not state or (owner ~= '' and owner ~= user) then
  return {'missing'}
end
if state == 'queued' then
  dequeue(id, user, f[3])
  finish(id, 'cancelled', now, retention_ms)
  return {'cancelled', user}
end
if state == 'leased' or state == 'running' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', k('cancels'), id)
  return {'requested', user}
end
return {'finished', user}
