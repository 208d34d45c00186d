-- Bind a push request's reply token to the container that first names itself with it
-- (push_requests.py). ARGV: prefix, digest, holder. One step, so two first calls at once bind one
-- name, and a record that expires meanwhile stays gone. Returns the name the request is bound to
-- ('' when the record is gone).
local key = k('push_token', ARGV[2])
if redis.call('EXISTS', key) == 0 then
  return ''
end
redis.call('HSETNX', key, 'holder', ARGV[3])
return redis.call('HGET', key, 'holder')
