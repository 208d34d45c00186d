-- A busy worker's GPU is free: start the job it prepared, or, when that job is no longer its to
-- start, lease it whatever it should run instead. ARGV: prefix, id, hold_token, pool, worker_id,
-- token (for a lease to run instead), now_ms, lease_ms, max_running_per_user, scan_limit.
-- The prepared job starts (leased with hold_token as its lease token) only while it is still
-- held for this worker and still the job this worker would claim now: a job queued since then
-- that ranks ahead of it (fair order, priority) goes first, and the prepared one waits again.
-- Returns {'started', id, queued_left, HGETALL} | {'other', id, queued_left, HGETALL} (the
-- prepared job was taken by an idle worker, cancelled, or outranked; this one is leased instead,
-- with the new token) | {'none'}.
local id, hold, pool, worker_id, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now, lease_ms, max_running, scan = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]),
  tonumber(ARGV[10])
local f = redis.call('HMGET', k('job', id), 'state', 'hold_token')
if f[1] == 'queued' and f[2] == hold and redis.call('EXISTS', k('paused')) == 0 then
  local best, score, scope = next_eligible(pool, max_running, scan, hold, now)
  if best == id then
    local leased = lease_job(id, score, scope, worker_id, hold, now, lease_ms)
    return {'started', leased[1], leased[2], leased[3]}
  end
  clear_hold(id)
end
local claimed = claim_next(pool, worker_id, token, now, lease_ms, max_running, scan, false)
if #claimed == 0 then
  return {'none'}
end
return {'other', claimed[1], claimed[2], claimed[3]}
