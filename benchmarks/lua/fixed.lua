-- The same request over and over (cache hits): the URL comes from the command line,
-- BENCH_METHOD (default GET) and the body from the file BENCH_BODY_FILE, if set.
-- No request() function: wrk then sends its prebuilt request at full speed.
local report = require("report")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

done = report.done
