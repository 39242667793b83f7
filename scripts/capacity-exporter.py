# A Prometheus endpoint with 200 series whose counters move on every scrape.
import http.server, random, sys
routes = ["/a","/b","/c","/d","/e","/f","/g","/h","/i","/j"]
codes = ["200","201","404","500","503"]
methods = ["GET","POST","PUT"]
counters = {}
for r in routes:
    for c in codes:
        for m in methods:
            counters[(r,c,m)] = 0.0   # 150 series
gauges = [0.0]*38                       # 38 series
buckets = [0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5]  # 9 + Inf + sum + count = 12 series
hist = [0]*(len(buckets)+1); hsum = [0.0]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        out = ["# TYPE http_requests_total counter"]
        for k in counters:
            counters[k] += random.randint(0, 20)
            out.append('http_requests_total{route="%s",code="%s",method="%s"} %g' % (k[0],k[1],k[2],counters[k]))
        out.append("# TYPE queue_depth gauge")
        for i in range(len(gauges)):
            gauges[i] = random.random()*100
            out.append('queue_depth{queue="q%d"} %g' % (i, gauges[i]))
        for _ in range(50):
            v = random.lognormvariate(-3, 0.6); hsum[0] += v
            for i,b in enumerate(buckets):
                if v <= b: hist[i] += 1; break
            else: hist[-1] += 1
        out.append("# TYPE http_request_duration_seconds histogram")
        acc = 0
        for i,b in enumerate(buckets):
            acc += hist[i]; out.append('http_request_duration_seconds_bucket{le="%g"} %d' % (b, acc))
        acc += hist[-1]
        out.append('http_request_duration_seconds_bucket{le="+Inf"} %d' % acc)
        out.append('http_request_duration_seconds_sum %g' % hsum[0])
        out.append('http_request_duration_seconds_count %d' % acc)
        body = ("\n".join(out)+"\n").encode()
        self.send_response(200); self.send_header("Content-Type","text/plain; version=0.0.4"); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
