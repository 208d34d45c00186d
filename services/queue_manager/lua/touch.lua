-- Check (and for heartbeats renew) a lease. ARGV: prefix, id, token, now_ms, lease_ms, mode, ran,
-- cached_json, events...: UserEvent JSON payloads to publish to the job's owner; cached_json: the
-- nodes ComfyUI reused, as those events said ('' = none), kept on the job. ran '1': the worker's
-- ComfyUI is done with the job, so it holds no GPU any more (its outputs may still be on their way
-- to storage): kept as ran_at, which the maximum job time no longer counts past (reap.lua).
-- mode 'heartbeat' renews the lease; mode 'events' only marks a leased job running, so the
-- common case (progress of a running job) writes nothing and costs no AOF fsync; mode 'watch' (a
-- worker's first heartbeat, held open for a cancel right after the claim) writes nothing at all.
-- Returns {'ok', expires_ms, cancel, user, became_running, holding} | {'stale'}; holding: the
-- job this worker prepared and still holds (its hold renewed with the lease), '' when none.
local id, token, mode = ARGV[2], ARGV[3], ARGV[6]
local now, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local key = k('job', id)
local f = redis.call('HMGET', key, 'state', 'token', 'cancel', 'user', 'worker_id', 'lease_expires')
local state = f[1]
if (state ~= 'leased' and state ~= 'running') or f[2] ~= token then
  return {'stale'}
end
local expires = f[6]
local became_running = 0
local holding = ''
if mode == 'heartbeat' then
  expires = now + lease_ms
  redis.call('ZADD', k('leases'), expires, id)
  redis.call('HSET', key, 'lease_expires', expires)
  redis.call('HSET', k('worker', f[5]), 'last_seen', now)
  redis.call('ZADD', k('workers'), now, f[5])
end
if mode ~= 'events' then
  -- The job this worker prepared keeps its hold while the worker lives; '' once it is gone.
  holding = holding_of(f[5]) or ''
  if holding ~= '' and mode == 'heartbeat' then
    redis.call('HSET', k('job', holding), 'hold_expires', expires)
  end
end
if ARGV[7] == '1' and (redis.call('HGET', key, 'ran_at') or '') == '' then
  redis.call('HSET', key, 'ran_at', now)
end
if state == 'leased' and mode ~= 'watch' then
  redis.call('HSET', key, 'state', 'running')
  became_running = 1
end
publish_forwarded(key, f[4], ARGV[8], 9)
return {'ok', expires, f[3], f[4], became_running, holding}
