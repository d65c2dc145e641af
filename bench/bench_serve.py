"""Load and fault benchmark of `multikg4rec serve`, on loopback only, bounded in count and time.

For each bundle: 1 / 8 / 32 concurrent clients send GET /recommend (random users) and POST /recommend
(random 5-item sessions); requests/s, p50 / p99 latency, failures, and the server's peak RSS. With a bundle
whose model embeds new items (content_knn; the graph models, given the KG links of an existing item, rebuilt
over the grown graph by multikg4rec.foldin): the time from POST /items to the item in a GET /recommend (right
after another added item, and 5 s after one),
items added while GET traffic runs (no request may fail), and a SIGKILL + restart that must serve every item
added before the kill.

    python bench/bench_serve.py --bundle B1 [B2 ...] [--requests 2000] [--seconds 20] [--baseline-src CHECKOUT]
        [--write bench/results/serve.md]

``--baseline-src``: a checkout of another commit (``git worktree add DIR REV``) whose server answers the GET
cells first, in the same invocation, so the table holds a before / after pair measured side by side.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, src: Path | None = None):
    """A server for ``bundle`` on a free loopback port; ``src``: a checkout whose ``src/`` it imports instead
    (the baseline of ``--baseline-src``)."""
    port = free_port()
    env = dict(os.environ, **({"PYTHONPATH": str(src / "src")} if src else {}))
    p = subprocess.Popen([sys.executable, "-m", "multikg4rec.cli", "serve", "--bundle", str(bundle), "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(p.stderr.read().decode() if p.poll() is not None else "server did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, make_request, clients: int, n: int, seconds: float, rate: float | None = None) -> dict:
    """``n`` requests (at most ``seconds``) over ``clients`` keep-alive connections, from one asyncio client
    (aiohttp on uvloop: the load generator must cost the shared cores less than the server).

    Closed loop (``rate`` None): each connection sends its next request when the last is answered, so the
    requests/s is the server's throughput at that concurrency. Open loop (``rate`` req/s): the connections
    send on a fixed schedule, ``rate / clients`` each, and a request's latency counts from its scheduled
    time, so a server that falls behind shows it in the tail (no coordinated omission)."""
    import asyncio

    import aiohttp
    import uvloop

    async def run():
        lat, fails, count = [], [0], [0]
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def worker(k):
            rng = np.random.default_rng(k)
            async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=1)) as s:
                j = 0
                while count[0] < n and time.perf_counter() < stop_at:
                    count[0] += 1
                    due = time.perf_counter()
                    if rate is not None:
                        due = t0 + (j * clients + k) / rate
                        j += 1
                        if (wait := due - time.perf_counter()) > 0:
                            await asyncio.sleep(wait)
                    try:
                        bad = await make_request(s, rng) >= 400
                    except (aiohttp.ClientError, asyncio.TimeoutError):   # a reset or a timeout: failed
                        bad = True
                    lat.append(time.perf_counter() - due)
                    fails[0] += bad
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return lat, fails[0], time.perf_counter() - t0
    lat, failed, wall = uvloop.run(run())
    a = np.array(lat) * 1e3
    return {"requests": len(a), "rps": len(a) / wall, "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "failed": failed}


async def status_of(response_cm) -> int:
    async with response_cm as r:
        await r.read()
        return r.status


def graph_links(bundle: Path, model: str) -> list[dict]:
    """For a graph model (multikg4rec.foldin): the KG triples of the bundle's item with the most, as a new
    item's links; none for the other models."""
    from benchlib import most_linked_item
    from multikg4rec.bundle import Bundle
    from multikg4rec.foldin import GROWABLE
    if model not in GROWABLE:
        return []
    return [{"relation": r, "entity": e} for r, e in most_linked_item(Bundle(bundle).dataset)[1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", nargs="+", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=2000, help="per (endpoint, clients) cell (default 2000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time cap per cell (default 20)")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop GET /recommend rate, req/s (default 1000)")
    ap.add_argument("--baseline-src", type=Path,
                    help="another checkout (e.g. `git worktree add ../base REV`): its server answers the GET "
                         "cells first, as the baseline of the same invocation")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    base_rev = (subprocess.run(["git", "-C", str(args.baseline_src), "rev-parse", "--short", "HEAD"], text=True,
                               stdout=subprocess.PIPE).stdout.strip() if args.baseline_src else None)
    lines = ["# `multikg4rec serve` under load", "",
             f"`python bench/bench_serve.py --bundle {' '.join(str(b) for b in args.bundle)} --requests {args.requests} "
             f"--seconds {args.seconds} --rate {args.rate:g}{f' --baseline-src <checkout of {base_rev}>' if args.baseline_src else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} "
             f"{os.cpu_count()} cores (the load generator shares them with the server), loopback only.", "",
             "Load: *closed* = each connection sends its next request when the last is answered (req/s is the "
             "throughput at that concurrency, and latency = clients / throughput); *N/s* = open loop, the "
             "connections together send N requests a second on a fixed schedule and latency counts from the "
             "scheduled time.", "",
             "| bundle | server | endpoint | clients | load | requests | req/s | p50 ms | p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for b in args.bundle:
        (b / "journal.jsonl").unlink(missing_ok=True)             # items a crashed earlier call added
        proc, url = start(b)
        h = httpx.get(url + "/health").json()
        from multikg4rec.bundle import Bundle
        users = [str(u) for u in Bundle(b).dataset.user_tokens]          # every user, drawn at random
        items = [it["item"] for it in httpx.get(url + "/items?q=&limit=200").json()["items"]]

        def get_rec(c, rng):
            return status_of(c.get(f"/recommend?user={users[rng.integers(len(users))]}&k=20"))

        def post_rec(c, rng):
            return status_of(c.post("/recommend", json={"items": [str(x) for x in rng.choice(items, 5, replace=False)],
                                                        "k": 20}))
        gets = [("GET /recommend", get_rec, c, None) for c in (1, 8, 32)] + [("GET /recommend", get_rec, 32, args.rate)]
        cells = [("this checkout", proc, url, gets + [("POST /recommend", post_rec, c, None) for c in (1, 8, 32)])]
        if args.baseline_src:
            base_proc, base_url = start(b, args.baseline_src)
            cells.insert(0, ("baseline", base_proc, base_url, gets))
        for who, server, at, todo in cells:
            for name, fn, clients, rate in todo:
                r = load(at, fn, clients, args.requests, args.seconds, rate)
                print(b.name, who, name, clients, rate, {k: round(v, 1) for k, v in r.items()}, flush=True)
                lines.append(f"| {b.name} ({h['model']}) | {who} | {name} | {clients} | "
                             f"{'closed' if rate is None else f'{rate:.0f}/s'} | {r['requests']} | {r['rps']:.0f} | "
                             f"{r['p50']:.1f} | {r['p99']:.1f} | {r['failed']} |")
            if who == "baseline":
                server.send_signal(signal.SIGTERM)
                server.wait()
        can_add = httpx.get(url + "/models").json()[0]["can_add_items"]
        links = graph_links(b, h["model"])
        if can_add:
            t0 = time.perf_counter()
            httpx.post(url + "/items", json={"item": "bench-new-0", "text": "A new film. Genres: Drama.", "links": links},
                       timeout=120)
            first = time.perf_counter() - t0                       # includes loading the encoder once

            def add_and_find(name: str) -> tuple[float, bool]:
                """Seconds from POST /items to the item in a GET /recommend over the whole catalogue."""
                t0 = time.perf_counter()
                httpx.post(url + "/items", json={"item": name, "text": "Another film. Genres: Comedy.", "links": links},
                           timeout=120)
                n_now = httpx.get(url + "/health").json()["items"]
                found = any(it["item"] == name for it in httpx.get(url + f"/recommend?user=1&k={n_now}").json()["items"])
                return time.perf_counter() - t0, found
            second, ok = add_and_find("bench-new-1")              # right after the first: its re-ranking still runs
            time.sleep(5)                                          # the background re-ranking of the top lists lands
            third, ok3 = add_and_find("bench-new-2")
            ok = ok and ok3
            adder_fail = [0]

            def adder():
                for k in range(3, 23):
                    adder_fail[0] += httpx.post(url + "/items", json={"item": f"bench-new-{k}", "text": f"Film {k}.",
                                                                     "links": links}, timeout=120).status_code >= 400
            t = threading.Thread(target=adder)
            t.start()
            r = load(url, get_rec, 8, args.requests, args.seconds)
            t.join()
            rss = peak_rss_mb(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc, url = start(b)
            all_back = sum(1 for k in range(23) if f"bench-new-{k}" in
                           {it["item"] for it in httpx.get(url + f"/recommend?user=1&k={httpx.get(url + '/health').json()['items']}").json()["items"]})
            notes.append(f"* {b.name}: a new item recommendable {second * 1e3:.0f} ms after its POST when it follows "
                         f"another added item at once, {third * 1e3:.0f} ms when it comes 5 s after one (the first "
                         f"POST, which loads the text encoder: {first:.1f} s); recommendable at once: {ok}. While 20 items "
                         f"were added, 8 clients sent {r['requests']} GET /recommend: {r['failed']} failed, "
                         f"{adder_fail[0]} adds failed. After SIGKILL and a restart, {all_back} of the 23 added items "
                         f"are served. Peak RSS {rss:.0f} MB.")
            (b / "journal.jsonl").unlink(missing_ok=True)
        else:
            notes.append(f"* {b.name}: peak RSS {peak_rss_mb(proc.pid):.0f} MB; {h['model']} answers POST /items "
                         f"with 409 (it cannot embed an unseen item).")
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    text = "\n".join(lines + [""] + notes) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
