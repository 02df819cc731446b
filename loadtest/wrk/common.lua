-- Shared by every wrk script of loadtest/peak.sh (loaded with dofile).
--
-- 1. No probe connection: wrk's default resolver opens and closes a connection to check the
--    address, and `openssl ocsp -port` busy-loops on a connection closed before a request.
-- 2. Optional pacing: WRK_DELAY_MS=n waits n ms before each request on a connection, to load a
--    server below its peak (the latency run at half of vigil's peak).
-- 3. One JSON line with the results, prefixed by "WRKJSON ", for peak.sh to collect.

function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup(host, service)
end

local pace = tonumber(os.getenv("WRK_DELAY_MS") or "")
if pace then
   function delay()
      return pace
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
