-- A unique URL per request: /api/s?n=<counter>&t=<thread>. With PER_THREAD
-- set, each thread stops after that many requests (wrk still waits out -d),
-- so the store is filled with exactly the keys random_keys.lua asks for
-- and nothing is evicted.
-- `tid` is a global that setup() gives each thread (thread:set); a local
-- of that name would hide it and make both threads send the same URLs.
local counter = 0
local threads = 0
local limit = tonumber(os.getenv("PER_THREAD") or "0")
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  return wrk.format("GET", "/api/s?n=" .. counter .. "&t=" .. tid)
end
function response(status, headers, body)
  if limit > 0 and counter >= limit then wrk.thread:stop() end
end
