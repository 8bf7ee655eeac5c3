-- Print wrk's results as one line of JSON, for bench/wrk.py to read.
-- wrk calls done() once, after the run, with the merged figures of all threads. Latencies are in microseconds.

local function percentiles(latency)
  local fields = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    fields[#fields + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  return "{" .. table.concat(fields, ", ") .. "}"
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'wrk-json: {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.2f, "stdev": %.2f, "max": %d, "percentiles": %s}}\n',
    summary.duration, summary.requests, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency.stdev, latency.max, percentiles(latency)
  ))
end
