-- Every request distinct (misses, filling the cache): a POST whose body is the template in the
-- file BENCH_BODY_FILE with its one "{{n}}" replaced by "<BENCH_SALT>-<thread>-<counter>".
-- BENCH_SALT keeps runs apart, the thread number keeps wrk threads apart.
local report = require("report")

local next_thread = 0
function setup(thread)
  thread:set("thread_number", next_thread)
  next_thread = next_thread + 1
end

local head, tail, tag
local counter = 0

function init(args)
  local f = assert(io.open(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is unset"), "rb"))
  local template = f:read("*a")
  f:close()
  local at = assert(string.find(template, "{{n}}", 1, true), "the body template has no {{n}}")
  head = string.sub(template, 1, at - 1)
  tail = string.sub(template, at + 5)
  tag = (os.getenv("BENCH_SALT") or "run") .. "-" .. tostring(thread_number or 0) .. "-"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. tag .. counter .. tail)
end

done = report.done
