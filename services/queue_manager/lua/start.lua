-- A busy worker's GPU is free: start the job it prepared, or, when that job is no longer its to
-- start, lease it whatever it should run instead; with a next_token, also hold the job after that
-- one for the same worker, as a prepare-claim would (hold_next in lib.lua). ARGV: prefix, id,
-- hold_token, pool, worker_id, token (for a lease to run instead), now_ms, lease_ms,
-- max_running_per_user, scan_limit, next_token ('' = hold nothing).
-- The prepared job starts (leased with hold_token as its lease token) only while it is still
-- held for this worker and still the job this worker would claim now: a job queued since then
-- that ranks ahead of it (fair order, priority) goes first, and the prepared one waits again.
-- Returns {outcome, leased, held}: outcome 'started' (the prepared job), 'other' (it was taken by
-- an idle worker, cancelled, or outranked; leased is the job to run instead, with the new token)
-- or 'none' (nothing to run: leased and held are {}); leased and held as claim.lua answers,
-- {id, queued_left, HGETALL}, held {} when nothing is left for this worker now.
-- The lease and the next hold are one step, so no crash of Redis or the queue manager leaves one
-- without the other; a start retried because its reply was lost (the prepared job is already
-- leased to this worker with hold_token) gets the same answer again: 'started', and the job the
-- worker holds now.
local id, hold, pool, worker_id, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now, lease_ms, max_running, scan = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]),
  tonumber(ARGV[10])
local next_token = ARGV[11]

local function then_hold(outcome, leased)
  return {outcome, leased, hold_after(pool, worker_id, next_token, now, lease_ms, max_running, scan)}
end

local f = redis.call('HMGET', k('job', id), 'state', 'hold_token', 'token', 'worker_id')
if (f[1] == 'leased' or f[1] == 'running') and f[3] == hold and f[4] == worker_id then
  local holding = holding_of(worker_id)
  if holding and next_token ~= '' then
    return {'started', as_claimed(id), as_claimed(holding)}
  end
  return then_hold('started', as_claimed(id))
end
if f[1] == 'queued' and f[2] == hold then
  if redis.call('EXISTS', k('paused')) == 0 then
    local best, score, scope = next_eligible(pool, max_running, scan, hold, now)
    if best == id then
      return then_hold('started', lease_job(id, score, scope, worker_id, hold, now, lease_ms))
    end
  end
  clear_hold(id)  -- outranked, or dispatch is paused: the worker forgets it, so nobody holds it
end
-- A draining worker (told to stop as it asked; drain.lua ended its hold) is leased nothing more
-- (claim_next in lib.lua).
local claimed = claim_next(pool, worker_id, token, now, lease_ms, max_running, scan, false)
if #claimed == 0 then
  return {'none', {}, {}}
end
return then_hold('other', claimed)
