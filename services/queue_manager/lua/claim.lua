-- Lease the next job for a worker of `pool`. ARGV: prefix, pool, worker_id, token, now_ms,
-- lease_ms, max_running_per_user (0 = none), scan_limit, prepare ('1' when the worker is busy and
-- prepares its next job: the job is held for it, not leased; hold_next in lib.lua), next_token
-- (an idle worker's claim: also hold the job after the one it leases, under this token, as
-- start.lua does; '' = hold nothing).
-- Returns {} when nothing is eligible, else {id, queued_left, HGETALL of the job, held}; held is
-- {} or the job held after it, {id, queued_left, HGETALL}. A lease publishes the owner's 'started'
-- event in the same step. (The logic is ``claim_next`` in lib.lua: submit.lua runs it too, to hand
-- a new job straight to a waiting worker.)
-- An idle worker's claim first ends any hold the worker still has: it is not going to start that
-- job (a claim repeated after its reply was lost holds it again rather than leave it held for a
-- token nobody has until the hold expires).
local pool, worker_id, token = ARGV[2], ARGV[3], ARGV[4]
local now, lease_ms, max_running, scan = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8])
local prepare, next_token = ARGV[9] == '1', ARGV[10] or ''
if not prepare then
  local old = holding_of(worker_id)
  if old then
    clear_hold(old)
  end
end
local claimed = claim_next(pool, worker_id, token, now, lease_ms, max_running, scan, prepare)
if #claimed == 0 or prepare then
  return claimed
end
claimed[4] = hold_after(pool, worker_id, next_token, now, lease_ms, max_running, scan)
return claimed
