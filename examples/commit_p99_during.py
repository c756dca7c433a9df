"""Commit latency while a long admin call runs (BENCHMARKS.md, "Commits while a long admin
call runs"). A measuring aid, not part of the service.

Start a release server whose config has tenant `bench` (auth none) with campaigns `bench`
(codes = ["BENCH"]) and `bulk`, and KP_ADMIN_TOKEN=bench-admin; fill it with
`karma-provider codes import` (server stopped). Then:

    python3 commit_p99_during.py 127.0.0.1:PORT idle:15          # 15 s of check -> commit
    python3 commit_p99_during.py 127.0.0.1:PORT export            # while GET /admin/v1/export runs
    python3 commit_p99_during.py 127.0.0.1:PORT import:codes.csv  # while an online import runs

8 connections run check -> commit on the shared code; commit latency is measured from send
to answer and printed as p50/p99/p99.9/max."""
import http.client, json, sys, threading, time, itertools

base = sys.argv[1]  # host:port
mode = sys.argv[2]
TOKEN = "bench-admin"
counter = itertools.count(1)
lat = []
lock = threading.Lock()
stop = threading.Event()

def worker(wid):
    c = http.client.HTTPConnection(base, timeout=120)
    mine = []
    while not stop.is_set():
        n = next(counter)
        body = json.dumps({"code": "BENCH", "cart": {"items": [{"inventoryItemId": "1", "quantity": 1, "priceCents": 1000}], "totalCents": 1000}})
        c.request("POST", "/v1/bench/voucher/check", body, {"content-type": "application/json"})
        r = json.loads(c.getresponse().read())
        ref = r.get("providerRef")
        if not ref:
            continue
        body = json.dumps({"amountCents": r["discountAmountCents"], "transactionId": "res_%032x" % (n + wid * 10**12 + int(time.time()) * 10**6), "providerRef": ref})
        t0 = time.perf_counter()
        c.request("POST", "/v1/bench/voucher/commit", body, {"content-type": "application/json"})
        resp = c.getresponse(); resp.read()
        mine.append((time.perf_counter() - t0) * 1000)
    with lock:
        lat.extend(mine)

threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
t0 = time.time()
if mode.startswith("idle:"):
    time.sleep(float(mode[5:]))
    what = "idle"
else:
    c = http.client.HTTPConnection(base, timeout=3600)
    h = {"authorization": "Bearer " + TOKEN}
    if mode == "export":
        c.request("GET", "/admin/v1/export", headers=h)
    else:
        data = open(mode.split(":", 1)[1], "rb").read()
        h["content-type"] = "text/csv"
        c.request("POST", "/admin/v1/tenants/bench/campaigns/bulk/codes", data, h)
    r = c.getresponse(); body = r.read()
    what = "%s: status %d, %d bytes, %s" % (mode.split(":")[0], r.status, len(body), body[:120] if mode != "export" else "")
stop.set()
for t in threads: t.join()
el = time.time() - t0
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print("%s | %.1f s | %d commits | p50 %.2f ms | p99 %.2f ms | p99.9 %.2f ms | max %.1f ms" % (what, el, len(lat), q(0.5), q(0.99), q(0.999), lat[-1]))
