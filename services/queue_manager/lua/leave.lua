-- A push request's take found its caller gone (push_requests.py): the connection of the container's
-- ``next`` broke while the take waited for a job. ARGV: prefix, chain, after (the lease token the
-- take was from). A repeat of that call that came meanwhile (take.lua marked it asked_again), while
-- the take waited or once it had its job, gets the take's job: it is kept as the chain's current one, and the mark is spent, so that the
-- repeat, gone too, gives it back. Otherwise the chain ends and takes the job back from its record
-- in the same step (token ''), so a later repeat gets 'over' while the caller gives the lease back.
-- A chain already past that take (its record's last take is from another job) went on with the
-- job: the repeat got it, ran it and asked for the next one.
-- Returns 'kept' | 'left' (give the lease back) | 'gone' (the record expired: give it back).
local key = k('push', ARGV[2])
local f = redis.call('HMGET', key, 'after', 'asked_again')
if not f[1] then
  return 'gone'
end
if f[1] ~= ARGV[3] then
  return 'kept'
end
if f[2] == ARGV[3] then
  redis.call('HSET', key, 'asked_again', '')
  return 'kept'
end
redis.call('HSET', key, 'open', 0, 'token', '')
redis.call('PUBLISH', k('ended'), ARGV[2])
return 'left'
