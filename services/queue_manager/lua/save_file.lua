-- Save one of a participant's files (workspaces/userdata.py) within her caps, checked and written
-- in one step, so saves sent at once cannot pass them together. ARGV: prefix, user, path, body,
-- meta ("<size> <modified ms>"), overwrite ('0': refuse an existing path), source (a move's file,
-- '' = none: it goes in the same step, and its bytes and place count no more), max_files,
-- max_bytes. Returns {'ok'} | {'closed'} | {'exists'} | {'missing'} (the source is gone) | {'files'} |
-- {'bytes', the total the save would bring} | {'folder', the file or folder in the way}.
local user, path, body, source = ARGV[2], ARGV[3], ARGV[4], ARGV[7]
if closed() then
  return {'closed'}
end
local files, meta = k('ws', 'ud', user), k('ws', 'udmeta', user)
if ARGV[6] == '0' and redis.call('HEXISTS', files, path) == 1 then
  return {'exists'}
end
if source ~= '' and redis.call('HEXISTS', files, source) == 0 then
  return {'missing'}
end
-- Whether one name is a folder of the other's ('a' and 'a/b.json'): a name is a file or a folder.
local function nested(a, b)
  return string.sub(b, 1, #a + 1) == a .. '/'
end
local others, total = 0, #body
local entries = redis.call('HGETALL', meta)
for i = 1, #entries, 2 do
  if entries[i] ~= path and entries[i] ~= source then
    if nested(entries[i], path) or nested(path, entries[i]) then
      return {'folder', entries[i]}
    end
    others = others + 1
    total = total + tonumber(string.match(entries[i + 1], '^%d+'))
  end
end
if others >= tonumber(ARGV[8]) then
  return {'files'}
end
if total > tonumber(ARGV[9]) then
  return {'bytes', total}
end
if source ~= '' and source ~= path then
  redis.call('HDEL', files, source)
  redis.call('HDEL', meta, source)
end
redis.call('HSET', files, path, body)
redis.call('HSET', meta, path, ARGV[5])
return {'ok'}
