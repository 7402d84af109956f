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


def connection(target, timeout=600):
    """An HTTP connection to `target`: a Unix socket path, or a (host, port) pair for TCP."""
    if isinstance(target, tuple):
        return http.client.HTTPConnection(*target, timeout=timeout)
    return UnixHTTPConnection(target, timeout)


def prompt_of(n_words, salt):
    # Distinct first word per run so no KV prefix is reused beyond the template's header.
    return " ".join([f"run{salt}"] + [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words - 1)])


def request_json(target, method, path, body=None):
    """(status, response, body) of one request: the body parsed as JSON, else its raw bytes."""
    conn = connection(target)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return resp.status, resp, parsed if parsed is not None else data
    finally:
        conn.close()


def chat(sock_path, body):
    return chat_route(sock_path, body)[1]


def chat_route(sock_path, body):
    status, resp, data = request_json(sock_path, "POST", "/v1/chat/completions", body)
    if status != 200:
        raise SystemExit(f"HTTP {status}: {str(data)[:300]}")
    return resp.getheader("x-outpost-route"), data


def stream_chat(target, body):
    """Streams one chat completion. Returns a dict: `start` and `end` (perf_counter seconds),
    `first` (seconds to the first non-empty content delta, None if none came), `total`, `text`,
    `route` (Outpost's x-outpost-route header), and `usage` and `timings` as found in the chunks
    (they come with the last chunk when `stream_options.include_usage` is set, in llama-server and
    in Outpost)."""
    body = dict(body, stream=True)
    conn = connection(target)
    out = {"first": None, "text": "", "usage": None, "timings": None}
    out["start"] = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        out["route"] = resp.getheader("x-outpost-route")
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise SystemExit(f"stream error: {chunk['error']}")
            for key in ("usage", "timings"):
                if chunk.get(key):
                    out[key] = chunk[key]
            choices = chunk.get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            if content:
                if out["first"] is None:
                    out["first"] = time.perf_counter() - out["start"]
                out["text"] += content
    finally:
        conn.close()
    out["end"] = time.perf_counter()
    out["total"] = out["end"] - out["start"]
    return out


def stream_ttft(sock_path, body):
    r = stream_chat(sock_path, body)
    return r["first"], r["total"]


def start_daemon(binary, config, work, env=None, timeout=300):
    """Starts `outpost serve --config CONFIG` with a NOTIFY_SOCKET listener in `work` and waits
    for READY=1. Returns (process, seconds to READY=1). Its stderr goes to `work`/outpost.log;
    a daemon that exits first raises RuntimeError carrying the end of that log."""
    notify_path = os.path.join(work, "notify.sock")
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.5)
    log_path = os.path.join(work, "outpost.log")
    log = open(log_path, "wb")
    env = dict(dict(os.environ, RUST_LOG="warn") if env is None else env, NOTIFY_SOCKET=notify_path)
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "serve", "--config", config], env=env, stderr=log)
    try:
        while True:
            try:
                msg = notify.recv(4096).decode()
            except socket.timeout:
                msg = ""
            if "READY=1" in msg.splitlines():
                return proc, time.perf_counter() - t0
            if proc.poll() is not None:
                with open(log_path, "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"outpost exited ({proc.returncode}) before READY=1:\n{tail}")
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise RuntimeError(f"outpost not ready after {timeout} s")
    finally:
        notify.close()
        log.close()


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
    config = os.path.join(work, "outpost.toml")
    with open(config, "w") as f:
        f.write(f'[model]\npath = "{os.path.abspath(args.model)}"\ncontext = {args.context}\n'
                f'threads = {args.threads}\n[api]\nsocket = "{sock_path}"\n'
                f'[cache]\npath = "{os.path.join(work, "cache.db")}"\nmin_confidence = 0.0\n')
    proc, ready = start_daemon(args.bin, config, work)
    try:
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
