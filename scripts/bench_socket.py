#!/usr/bin/env python3
"""Benchmark `outpost serve` through its Unix socket (Python standard library only).

Starts the daemon on MODEL with a NOTIFY_SOCKET listener, measures the time from process start to
READY=1, then sends chat completions with prompts of several lengths and reports prompt and decode
tokens/s as the daemon measured them (the llama-server style `timings` object) next to what the
client saw (time to first streamed token, total time). Then, with --cache-runs N (default 5), the
time of a repeated question answered from the response cache next to the time the local model
took for the same answer (the tiny/synthetic models are never confident, so the bench stores
every answer: cache.min_confidence = 0).

    scripts/bench_socket.py --model 05b-q4km.gguf --threads 2 [--bin target/release/outpost]
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORDS = ("river mountain quiet engine signal harbor lantern orbit meadow copper winter garden "
         "thunder canvas pillar velvet compass ember falcon glacier").split()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def prompt_of(n_words, salt):
    # Distinct first word per run so no KV prefix is reused beyond the template's header.
    return " ".join([f"run{salt}"] + [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words - 1)])


def chat(sock_path, body):
    conn = UnixHTTPConnection(sock_path)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def chat_route(sock_path, body):
    conn = UnixHTTPConnection(sock_path)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {data[:300]!r}")
    return resp.getheader("x-outpost-route"), json.loads(data)


def stream_ttft(sock_path, body):
    body = dict(body, stream=True)
    conn = UnixHTTPConnection(sock_path)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    first = None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        choices = chunk.get("choices") or [{}]
        if first is None and choices[0].get("delta", {}).get("content"):
            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="target/release/outpost")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", default="16,128,400")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-runs", type=int, default=5)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="outpost-bench-")
    sock_path = os.path.join(work, "outpost.sock")
    notify_path = os.path.join(work, "notify.sock")
    config = os.path.join(work, "outpost.toml")
    with open(config, "w") as f:
        f.write(f'[model]\npath = "{os.path.abspath(args.model)}"\ncontext = {args.context}\n'
                f'threads = {args.threads}\n[api]\nsocket = "{sock_path}"\n'
                f'[cache]\npath = "{os.path.join(work, "cache.db")}"\nmin_confidence = 0.0\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(300)

    env = dict(os.environ, NOTIFY_SOCKET=notify_path, RUST_LOG="warn")
    t0 = time.perf_counter()
    proc = subprocess.Popen([args.bin, "serve", "--config", config], env=env)
    try:
        while True:
            msg = notify.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                ready = time.perf_counter() - t0
                break
        print(f"start -> READY=1: {ready * 1000:.0f} ms")

        conn = UnixHTTPConnection(sock_path)
        conn.request("GET", "/v1/models")
        info = json.loads(conn.getresponse().read())["data"][0]
        print(f"model: {info['id']} {info['quantization']} {info['parameters']} params, "
              f"{info['size'] / 2**20:.0f} MiB, threads {args.threads}")

        # Warm-up (first-touch of the mmapped weights).
        chat(sock_path, {"messages": [{"role": "user", "content": "warm up"}], "max_tokens": 8, "temperature": 0})

        rows = []
        for n_words in [int(x) for x in args.prompt_words.split(",")]:
            pp, tg, pn, ttft, total = [], [], [], [], []
            for run in range(args.runs):
                body = {"messages": [{"role": "user", "content": prompt_of(n_words, run + 100 * n_words)}],
                        "max_tokens": args.max_tokens, "temperature": 0}
                r = chat(sock_path, body)
                t = r["timings"]
                pp.append(t["prompt_per_second"])
                tg.append(t["predicted_per_second"])
                pn.append(t["prompt_n"])
                body["messages"][0]["content"] = prompt_of(n_words, run + 100 * n_words + 50)
                first, whole = stream_ttft(sock_path, body)
                ttft.append(first or 0.0)
                total.append(whole)
            rows.append((statistics.median(pn), statistics.median(pp), statistics.median(tg),
                         statistics.median(ttft) * 1000, statistics.median(total)))
        print(f"{'prompt tok':>10} {'prompt tok/s':>13} {'decode tok/s':>13} {'TTFT ms':>9} {'total s':>8}")
        for pn, pp, tg, ttft, total in rows:
            print(f"{pn:>10.0f} {pp:>13.1f} {tg:>13.1f} {ttft:>9.0f} {total:>8.2f}")

        if args.cache_runs:
            local_ms, hit_ms = [], []
            for run in range(args.cache_runs):
                body = {"messages": [{"role": "user", "content": f"Question {run}: {prompt_of(24, 7 + run)}?"}],
                        "max_tokens": 64, "temperature": 0}
                t0 = time.perf_counter()
                first = chat_route(sock_path, body)
                local_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.3)  # the store runs after the response
                t0 = time.perf_counter()
                again = chat_route(sock_path, body)
                hit_ms.append((time.perf_counter() - t0) * 1000)
                if first[0] != "local" or again[0] != "cache":
                    raise SystemExit(f"expected local then cache, got {first[0]} then {again[0]}")
            print(f"same answer (64 tokens max, {args.cache_runs} questions): local median "
                  f"{statistics.median(local_ms):.0f} ms, cache hit median {statistics.median(hit_ms):.1f} ms "
                  f"(max {max(hit_ms):.1f} ms), through the socket")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
