-- Take the next job of a push request's chain from the job the container is done with
-- (push_requests.py). ARGV: prefix, chain, after (that job's lease token), now_ms. One step, so
-- calls at once (a leaked reply token's beside the container's) take once from each job: the chain
-- records `after` and counts the job before the caller claims it. Returns one of:
--   {'take'}: counted, the caller claims the job (and sets it as the chain's current one);
--   {'over'}: closed, past its window or its max_jobs, or nothing came of the take: end it;
--   {'again', HGETALL of the current job}: a repeat of the take whose reply was lost: the same lease,
--     marked asked_again as well (the first call, finding its caller gone, leaves it to the repeat);
--   {'taking'}: a take from that job is under way (marked asked_again: a repeat waits for its
--     outcome, which the take then keeps for it even if its own caller is gone, leave.lua);
--   {'moved'}: the chain is past that job;  {'gone'}: the record expired.
local key = k('push', ARGV[2])
local f = redis.call('HMGET', key, 'token', 'after', 'open', 'until_ms', 'jobs', 'max_jobs', 'job')
if not f[1] then
  return {'gone'}
end
local after, current, taken_from, open = ARGV[3], f[1], f[2] or '', f[3] == '1'
if after == current and after ~= taken_from then
  if not open or tonumber(ARGV[4]) >= tonumber(f[4]) or tonumber(f[5]) >= tonumber(f[6]) then
    return {'over'}
  end
  redis.call('HSET', key, 'after', after, 'jobs', tonumber(f[5]) + 1)
  return {'take'}
end
if after ~= taken_from then
  return {'moved'}
end
if after == current then  -- the take from it is under way, or it found nothing and ended the chain
  if not open then
    return {'over'}
  end
  redis.call('HSET', key, 'asked_again', after)
  return {'taking'}
end
local job = redis.call('HGETALL', k('job', f[7]))
local fields = {}
for i = 1, #job, 2 do
  fields[job[i]] = job[i + 1]
end
if fields.token ~= current or (fields.state ~= 'leased' and fields.state ~= 'running') then
  return {'over'}  -- the job it was given ended meanwhile (given back as its request went away)
end
redis.call('HSET', key, 'asked_again', after)
return {'again', job}
