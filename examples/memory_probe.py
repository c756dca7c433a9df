#!/usr/bin/env python3
"""RSS of the service step by step on one persistent data directory (BENCHMARKS.md,
"Memory"). A measuring aid, not part of the service.

    python3 memory_probe.py target/release/karma-provider /tmp/probe \
        codes=10000000 members=1000000 holds=300000 reads=50000 conns=256 restart reads=50000

Steps, in the order given: codes=N (offline `codes import` of BULK-0000000000…, before
the server starts), members=N (admin import, CHUNK rows a request, default 20000),
holds=N (checks on distinct bulk codes, each with a member's userId), reads=N (account
reads), conns=N (N connections open at once), restart, sleep=S. After each step it prints
the server's VmRSS, VmHWM, RssAnon and RssFile. CACHE_MB sets storage.cache_capacity_mb;
HOLD_BASE offsets the codes the holds step checks."""
import http.client, json, os, subprocess, sys, threading, time

BIN, WD = sys.argv[1], sys.argv[2]
CACHE = os.environ.get("CACHE_MB")
os.makedirs(WD, exist_ok=True)
CFG = os.path.join(WD, "probe.toml")
open(CFG, "w").write(f'''
[server]
listen = "127.0.0.1:0"
[storage]
path = "{WD}/data"
{"cache_capacity_mb = " + CACHE if CACHE else ""}
[[tenants]]
id = "bench"
auth = {{ mode = "none" }}
[[tenants.campaigns]]
id = "bulk"
discount = {{ amount_cents = 100 }}
max_uses_per_code = 1
[[tenants.loyalty]]
program_id = 1
earn = {{ points = 1, per_cents = 100 }}
auto_enroll = true
[[tenants.loyalty.rewards]]
id = "r"
title = "Bench reward"
points_cost = 1
[admin]
token_env = "KP_PROBE_ADMIN_TOKEN"
''')
env = dict(os.environ, KP_PROBE_ADMIN_TOKEN="probe-token", KP_LOG="warn")
srv = None
port = None

def status(pid):
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, _, v = l.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            d[k] = int(v.split()[0]) // 1024
    return d

def report(what):
    print(f"{time.strftime('%H:%M:%S')} {what:40s} " + " ".join(f"{k}={v}MiB" for k, v in status(srv.pid).items()), flush=True)

def start():
    global srv, port
    srv = subprocess.Popen([BIN, "serve", "--config", CFG], stdout=subprocess.PIPE, env=env)
    line = srv.stdout.readline().decode()
    port = int(line.strip().rsplit(":", 1)[1].strip("/"))
    time.sleep(1)

def stop():
    srv.terminate(); srv.wait()

def post(c, path, body, ctype="application/json", token=False):
    h = {"content-type": ctype}
    if token: h["authorization"] = "Bearer probe-token"
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse(); data = r.read()
    return r.status, data

def parallel(n, threads, fn):
    def work(t):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(t, n, threads):
            fn(c, i)
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]

started = False
for step in sys.argv[3:]:
    name, _, arg = step.partition("=")
    n = int(arg) if arg else 0
    t0 = time.time()
    if name == "codes":
        csv = os.path.join(WD, "codes.csv")
        with open(csv, "w") as f:
            for i in range(n): f.write(f"BULK-{i:010d}\n")
        r = subprocess.run([BIN, "codes", "import", "--config", CFG, "--tenant", "bench", "--campaign", "bulk", csv], env=env, capture_output=True, text=True)
        print(r.stdout[-400:], r.stderr[-400:]); os.remove(csv)
        print(f"codes import {n}: {time.time()-t0:.0f} s", flush=True); continue
    if not started:
        start(); started = True; report("after start")
    if name == "members":
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        CH = int(os.environ.get("CHUNK", "20000"))
        for a in range(0, n, CH):
            b = min(n, a + CH)
            body = "user_id,balance,lifetime_earned\n" + "".join(f"bm{k:08d},1000000,1000000\n" for k in range(a, b))
            s, d = post(c, "/admin/v1/tenants/bench/loyalty/1/members/import", body, "text/csv", True)
            assert s == 200, (s, d[:300])
        report(f"after members={n} ({time.time()-t0:.0f}s)")
    elif name == "holds":
        base = int(os.environ.get("HOLD_BASE", "0")); errs = [0]
        def chk(c, i):
            k = (base + i) * 7919 % 10_000_000
            s, d = post(c, "/v1/bench/voucher/check", json.dumps({"code": f"BULK-{k:010d}", "userId": f"bm{i % 1000000:08d}", "cart": {"items": [], "totalCents": 5000}}))
            if s != 200 or b'"ok":true' not in d: errs[0] += 1
        parallel(n, 16, chk)
        report(f"after holds={n} errs={errs[0]} ({time.time()-t0:.0f}s)")
    elif name == "reads":
        def rd(c, i):
            k = i * 104729 % 1000000
            post(c, "/v1/bench/loyalty/account", json.dumps({"userId": f"bm{k:08d}", "loyaltyProgramId": 1}))
        parallel(n, 16, rd)
        report(f"after account reads={n} ({time.time()-t0:.0f}s)")
    elif name == "restart":
        stop(); start(); report(f"after restart ({time.time()-t0:.0f}s)")
    elif name == "conns":
        import socket
        ss = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port)); ss.append(s)
            s.sendall(b'POST /v1/bench/loyalty/account HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 48\r\n\r\n{"userId": "bm00000001", "loyaltyProgramId": 1} ')
        for s in ss: s.recv(65536)
        report(f"with {n} open connections")
        for s in ss: s.close()
    elif name == "sleep":
        time.sleep(n); report(f"after sleep {n}")
if started:
    report("end"); stop()
