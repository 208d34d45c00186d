-- End a lease as its holder: outcome 'succeeded' | 'failed' | 'retry' | 'release' | 'lost' |
-- 'overrun' (the reaper's, for a job past its pool's maximum job time: failed with error_json and
-- put in the dead letters, where the admin sees it and may requeue it; not tried again).
-- 'release' gives the job back unfinished (shutdown, or ComfyUI down before the job reached it);
-- 'lost' gives it back after its worker's ComfyUI died or went silent with the job in it: neither
-- counts an attempt, but 'lost' counts a ComfyUI loss and fails the job (with error_json) at the
-- max_losses-th one, as the job itself is then the likely killer.
-- ARGV: prefix, id, token, now_ms, outcome, outputs_json, error_json, retention_ms,
-- backoff_base_ms, backoff_max_ms, expected_state, event_json, max_losses, pool, timing_json,
-- gpu_records, cached_json, events...
-- events... are the job's trailing events (UserEvent JSON payloads) a completion or failure
-- carries: published to the owner before anything else this call announces, and only when it
-- ends the lease (a repeat, 'again', publishes nothing). cached_json: the nodes ComfyUI reused,
-- from those events ('' = none), kept on the job as an ``/events`` call keeps them.
-- event_json is the owner's 'finished' event for expected_state, published here when the job ends
-- in that state ('' = none expected). 'release' with a prepared job's hold token gives the hold
-- up. timing_json is the worker's timing of the job, kept (the last gpu_records of them) in
-- {p}:admin:gpu:{pool} for the admin page's GPU use ('' = none).
-- Returns {'ok', new_state, user, queued_at, published (1|0)} | {'again', state, user} (a repeat
-- of the holder's last call) | {'stale'}.
local id, token, now, outcome = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local retention_ms = tonumber(ARGV[8])
local key = k('job', id)
local f = redis.call('HMGET', key, 'state', 'token', 'done_token', 'attempts', 'max_attempts',
  'cancel', 'user', 'scope', 'score', 'worker_id', 'queued_at', 'hold_token')
local state, user = f[1], f[7]
if state == 'queued' and outcome == 'release' and token ~= '' and f[12] == token then
  end_hold(id)  -- a prepared job given back: it never left its queue, and no attempt was counted
  return {'ok', state, user, f[11], 1}
end
if state and token ~= '' and f[3] == token then
  return {'again', state, user}
end
if (state ~= 'leased' and state ~= 'running') or f[2] ~= token then
  return {'stale'}
end
publish_forwarded(key, user, ARGV[17], 18)
end_lease(id, user, f[10])
redis.call('HSET', key, 'token', '', 'done_token', token)
if f[6] == '1' and outcome ~= 'succeeded' then
  outcome = 'cancelled'
end
if outcome == 'succeeded' then
  redis.call('HSET', key, 'outputs', ARGV[6], 'error', '')
  finish(id, 'succeeded', now, retention_ms)
elseif outcome == 'overrun' then
  dead_letter(id, now, retention_ms, ARGV[7])
elseif outcome == 'failed' or outcome == 'cancelled' then
  redis.call('HSET', key, 'error', ARGV[7])
  finish(id, outcome, now, retention_ms)
elseif outcome == 'release' then
  redis.call('HINCRBY', key, 'attempts', -1)
  enqueue(id, user, f[8], f[9])
elseif outcome == 'lost' then
  redis.call('HINCRBY', key, 'attempts', -1)
  if redis.call('HINCRBY', key, 'comfyui_losses', 1) >= tonumber(ARGV[13]) then
    redis.call('HSET', key, 'error', ARGV[7])
    finish(id, 'failed', now, retention_ms)
  else
    enqueue(id, user, f[8], f[9])
  end
elseif tonumber(f[4]) >= tonumber(f[5]) then
  dead_letter(id, now, retention_ms, ARGV[7])
else
  redis.call('HSET', key, 'error', ARGV[7])
  local due = now + backoff_ms(tonumber(f[4]), tonumber(ARGV[9]), tonumber(ARGV[10]))
  retry_later(id, user, f[8], f[9], due, now)
end
if ARGV[15] and ARGV[15] ~= '' then
  redis.call('RPUSH', k('admin', 'gpu', ARGV[14]), ARGV[15])
  redis.call('LTRIM', k('admin', 'gpu', ARGV[14]), -tonumber(ARGV[16]), -1)
end
local new_state = redis.call('HGET', key, 'state')
local published = 0
if ARGV[11] ~= '' and new_state == ARGV[11] then
  publish_event(user, ARGV[12])
  published = 1
end
return {'ok', new_state, user, f[11], published}
