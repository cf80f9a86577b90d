#!/usr/bin/env python3
# Creates N idle rooms on a running `confer serve` and measures its CPU and memory over
# 10 s. Usage (Linux; reads /proc):
#   CONFER_HTTP_LISTEN=127.0.0.1:8080 target/release/confer serve &
#   scripts/measure-idle-rooms.py 8080 $! 10000
import http.client, json, sys, time, os
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
t = time.time()
for i in range(n):
    c.request("POST", "/v1/rooms", body=json.dumps({"name": f"r{i}"}), headers={"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
print(f"created {n} rooms in {time.time()-t:.1f} s")
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return int(f[11]) + int(f[12])
tick = os.sysconf("SC_CLK_TCK")
time.sleep(2)
a, t0 = cpu(), time.time()
time.sleep(10)
b, t1 = cpu(), time.time()
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"idle CPU {100.0*(b-a)/tick/(t1-t0):.1f}% of one core, RSS {int(rss)/1024:.0f} MiB")
c.request("GET", "/metrics"); m = c.getresponse().read().decode()
print([l for l in m.splitlines() if l.startswith("confer_rooms") or l.startswith("confer_tick_overruns_total") or l.startswith("confer_ticks_total")])
