#!/usr/bin/env python3
"""Outpost against llama-server on the same GGUF, threads and slots (Python standard library only).

Starts llama.cpp's llama-server (TCP on a free loopback port) and `outpost serve` (Unix socket in
a temp dir) with the same model, threads and number of parallel requests, sends both the very same
requests, one server at a time but interleaved request by request (A then B, then B then A, ...),
so that the drift of a shared machine's speed during the run reaches both alike; stops both; and
prints one markdown table with both systems' values and the ratio Outpost / llama-server:

  decode tok/s, one stream          server timings (`predicted_per_second`), median of --runs
  prompt tok/s, cold ~330-token     server timings (`prompt_per_second`); a ~1300-token prompt too
    prompt                          for models of 200 MiB and more (--long-prompt)
  N concurrent streams, aggregate   completion tokens of all N streams / client wall time from the
    tok/s                           first request sent to the last stream finished
  slowest first token of those N    client time to the first streamed content, the slowest stream
  first token, two apps taking      app A and app B, each with its own ~1000-token system prompt,
    turns                           alternate A, B, A, B: the first token of each returning app's
                                    request (the 3rd and 4th); fresh system prompts every run
  first token, short prompt         client time to the first streamed content

For time rows the ratio is a time ratio: below 1 means Outpost answered sooner. Every request is
identical on both sides: temperature 0, the same max_tokens and the same texts, streamed with
`stream_options.include_usage` (both servers then put `usage` and llama-server-style `timings` in
the last chunk). Each server gets one warm-up request first. With llama-bench available, its pp512
and tg64 on the same model and threads are printed as a reference line (decode goal: Outpost's
one-stream decode within 0.95x of tg64).

Outpost runs with the response cache off (`cache.enabled = false`, so no answer comes from the
cache) and, unless --router, the router off (`router.enabled = false`): a pure engine comparison.
Flash attention: each side's default unless --flash-attn, which sets both (and llama-bench); the
notes under the table say what each side used (llama-server's from its log, hence its `-lv 4`).
llama-server runs as `-m MODEL -t T -tb T -c CONTEXT*P -np P --no-webui` (P slots of CONTEXT
tokens each, like Outpost's `model.context` per request) and otherwise its defaults: continuous
batching, its RAM prompt cache (`--cache-ram`), flash attention `auto`. An Outpost build that does
not know `api.parallel` yet is started again without it, and a note says so.

    scripts/bench_serving.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \\
        --parallel 4 [--outpost-bin target/release/outpost] [--llama-server PATH] \\
        [--llama-bench PATH] [--runs N] [--max-tokens N] [--json] \\
        [--baseline-outpost-bin OLD]    # a third server, e.g. the build before a change

llama-server and llama-bench default to ../refs/llama.cpp/build/bin next to the repository (what
scripts/build_llama_reference.sh builds), else the PATH. Progress goes to stderr; the table (or,
with --json, the numbers as JSON) to stdout.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_socket as bs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_BIN = os.path.normpath(os.path.join(ROOT, "..", "refs", "llama.cpp", "build", "bin"))

TOPICS = ["a lighthouse keeper", "a robot who learns to paint", "a city under the sea",
          "a clockmaker's apprentice", "a journey across the desert", "a lost dog finding home",
          "a library that never closes", "the first colony on Mars", "a baker in a small village",
          "a mountain rescue team", "a ship caught in a storm", "a detective in old Paris"]
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "How many legs does a spider have?",
             "What is the boiling point of water?", "Who wrote Romeo and Juliet?", "What is two plus two?"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def default_tool(name):
    path = os.path.join(REF_BIN, name)
    return path if os.access(path, os.X_OK) else shutil.which(name)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# The reference: llama-bench and llama-server


def run_llama_bench(args):
    cmd = [args.llama_bench, "-m", args.model, "-t", str(args.threads), "-p", "512", "-n", "64",
           "-r", str(max(args.runs, 1)), "-o", "json"]
    if args.flash_attn:
        cmd += ["-fa", args.flash_attn]
    log(f"llama-bench: {' '.join(cmd)}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        log(f"llama-bench failed ({out.returncode}): {out.stderr[-1000:]}")
        return None
    res = {"command": " ".join(cmd)}
    for entry in json.loads(out.stdout):
        if entry.get("n_prompt") == 512 and entry.get("n_gen") == 0:
            res["pp512"] = entry["avg_ts"]
        elif entry.get("n_gen") == 64 and entry.get("n_prompt") == 0:
            res["tg64"] = entry["avg_ts"]
        fa = entry.get("flash_attn")
        res["flash_attn"] = {-1: "auto", 0: "off", 1: "on", True: "on", False: "off"}.get(fa, fa)
        res["build_commit"] = entry.get("build_commit")
        res["cpu_info"] = entry.get("cpu_info")
    return res


def start_llama_server(args, work):
    port = free_port()
    cmd = [args.llama_server, "-m", args.model, "-t", str(args.threads), "-tb", str(args.threads),
           "-c", str(args.context * args.parallel), "-np", str(args.parallel), "--no-webui",
           "--host", "127.0.0.1", "--port", str(port),
           # Log level 4 (debug) adds the llama_context lines (how flash attention was resolved) at
           # start and a few lines per request, none per token.
           "-lv", "4"]
    if args.flash_attn:
        cmd += ["-fa", args.flash_attn]
    log(f"llama-server: {' '.join(cmd)}")
    log_path = os.path.join(work, "llama-server.log")
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    target = ("127.0.0.1", port)
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"llama-server exited ({proc.returncode}):\n{tail}")
        try:
            status, _, _ = bs.request_json(target, "GET", "/health")
            if status == 200:
                break
        except OSError:
            pass
        if time.perf_counter() - t0 > 300:
            stop(proc)
            raise RuntimeError("llama-server not healthy after 300 s")
        time.sleep(0.2)
    return proc, target, time.perf_counter() - t0, log_path, cmd


def llama_server_facts(log_path):
    """What llama-server's log says about flash attention and its slots."""
    text = open(log_path, errors="replace").read()
    facts = {}
    m = re.search(r"flash_attn\s*=\s*(\w+)", text)
    requested = m.group(1) if m else "?"
    if re.search(r"Flash Attention enabled", text):
        facts["flash_attn"] = f"{requested} -> enabled" if requested == "auto" else requested
    elif re.search(r"Flash Attention not supported", text):
        facts["flash_attn"] = f"{requested} -> disabled"
    else:
        facts["flash_attn"] = requested
    m = re.search(r"n_slots = (\d+), n_ctx_slot = (\d+), kv_unified = '(\w+)'", text)
    if m:
        facts["slots"] = f"{m.group(1)} slots of {m.group(2)} tokens, kv_unified {m.group(3)}"
    m = re.search(r"system_info: (.*)", text)
    if m:
        facts["system_info"] = m.group(1).strip()
    return facts


# ---------------------------------------------------------------------------------------------
# Outpost


def write_outpost_config(args, work, parallel):
    sock_path = os.path.join(work, "outpost.sock")
    lines = ["[model]", f"path = {json.dumps(os.path.abspath(args.model))}", f"context = {args.context}",
             f"threads = {args.threads}"]
    if args.flash_attn:
        lines.append(f'flash_attention = "{args.flash_attn}"')
    lines += ["[api]", f"socket = {json.dumps(sock_path)}"]
    if parallel:
        lines.append(f"parallel = {args.parallel}")
    lines += ["[cache]", "enabled = false", f"path = {json.dumps(os.path.join(work, 'cache.db'))}"]
    if not args.router:
        lines += ["[router]", "enabled = false"]
    config = os.path.join(work, "outpost.toml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return config, sock_path


def start_outpost(args, work, binary=None):
    """(process, socket path, seconds to READY=1, notes). An Outpost build without `api.parallel`
    is started again without it (and the notes say so)."""
    binary = binary or args.outpost_bin
    os.makedirs(work, exist_ok=True)
    notes = []
    config, sock_path = write_outpost_config(args, work, parallel=True)
    log(f"outpost: {binary} serve --config {config}")
    try:
        proc, ready = bs.start_daemon(binary, config, work)
    except RuntimeError as err:
        if "api.parallel" not in str(err) and "`parallel`" not in str(err):
            raise
        notes.append("this Outpost build has no `api.parallel`: it ran with its default (one request "
                     "at a time)")
        log(f"outpost: {notes[-1]}")
        config, sock_path = write_outpost_config(args, work, parallel=False)
        proc, ready = bs.start_daemon(binary, config, work)
    return proc, sock_path, ready, notes


# ---------------------------------------------------------------------------------------------
# The workload: every request body, made once and sent to both servers


class Sizer:
    """Words of filler text for a wanted prompt size in tokens, measured through llama-server's
    /apply-template and /tokenize (the total the model sees, chat template included); without
    llama-server, one token per word."""

    def __init__(self, target=None):
        self.per_word, self.overhead, self.measured = 1.0, 0.0, False
        if target is None:
            return
        try:
            n1, n2 = 100, 400
            t1, t2 = self._tokens(target, n1), self._tokens(target, n2)
            self.per_word = (t2 - t1) / (n2 - n1)
            self.overhead = t1 - n1 * self.per_word
            self.measured = True
        except Exception as err:  # noqa: BLE001 - a missing endpoint only costs accuracy
            log(f"prompt sizing through llama-server failed ({err}); assuming one token per word")

    @staticmethod
    def _tokens(target, n_words):
        messages = [{"role": "user", "content": bs.prompt_of(n_words, 999)}]
        status, _, applied = bs.request_json(target, "POST", "/apply-template", {"messages": messages})
        if status != 200:
            raise RuntimeError(f"/apply-template: HTTP {status}")
        status, _, tok = bs.request_json(target, "POST", "/tokenize",
                                         {"content": applied["prompt"], "add_special": True, "parse_special": True})
        if status != 200:
            raise RuntimeError(f"/tokenize: HTTP {status}")
        return len(tok["tokens"])

    def words(self, total_tokens, with_template=True):
        extra = self.overhead if with_template else 0.0
        return max(8, round((total_tokens - extra) / self.per_word))


def body(messages, max_tokens):
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}}


def user(text):
    return [{"role": "user", "content": text}]


def make_workload(args, sizer):
    runs, p = args.runs, args.parallel
    w = {"warmup": body(user("Say hello."), 8)}
    w["decode"] = [body(user(f"Story {r}: write a long, detailed story about {TOPICS[r % len(TOPICS)]}, "
                             "at least 600 words."), args.max_tokens) for r in range(runs)]
    w["prompt"] = {}
    for size in args.prompt_sizes:
        n = sizer.words(size)
        w["prompt"][size] = [body(user(bs.prompt_of(n, 1000 * size + r) + "\nSummarize the text above."), 8)
                             for r in range(runs)]
    w["concurrent"] = [[body(user(f"Story {r}.{i}: write a long, detailed story about "
                                  f"{TOPICS[(r * p + i + 3) % len(TOPICS)]}, at least 600 words."), args.max_tokens)
                        for i in range(p)] for r in range(runs)]
    n_sys = sizer.words(args.system_tokens, with_template=False)
    w["apps"] = []
    for r in range(runs):
        sys_a = f"You are app A{r}, a note taker. Context: " + bs.prompt_of(n_sys, 50_000 + r)
        sys_b = f"You are app B{r}, a translator. Context: " + bs.prompt_of(n_sys, 60_000 + r)
        w["apps"].append([body([{"role": "system", "content": s},
                                {"role": "user", "content": f"Request {k} of round {r}: give a one-line summary."}], 8)
                          for k, s in enumerate([sys_a, sys_b, sys_a, sys_b])])
    w["short"] = [body(user(f"Q{r}: {QUESTIONS[r % len(QUESTIONS)]}"), 8) for r in range(runs)]
    return w


# ---------------------------------------------------------------------------------------------
# Measuring one server


def completion_tokens(r):
    if r["usage"] and "completion_tokens" in r["usage"]:
        return r["usage"]["completion_tokens"]
    return (r["timings"] or {}).get("predicted_n", 0)


def timing(r, key):
    if not r["timings"]:
        raise SystemExit(f"no `timings` in the stream (usage: {r['usage']})")
    return r["timings"][key]


def one_decode(target, b):
    return bs.stream_chat(target, b)


def one_concurrent(target, bodies):
    results = [None] * len(bodies)
    gate = threading.Barrier(len(bodies))

    def one(i, b):
        gate.wait()
        results[i] = bs.stream_chat(target, b)

    threads = [threading.Thread(target=one, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise SystemExit("a concurrent stream failed")
    return results


def one_apps(target, seq):
    return [bs.stream_chat(target, b) for b in seq]


def interleaved(targets, items, fn):
    """fn(target, item) for every item on every server, alternating the servers item by item (and
    which goes first), so that a drift of the machine's speed during the row reaches both alike.
    Returns {server: [result per item]}."""
    out = {name: [] for name in targets}
    names = list(targets)
    for i, item in enumerate(items):
        for name in (names if i % 2 == 0 else names[::-1]):
            out[name].append(fn(targets[name], item))
    return out


def measure(targets, w, args):
    """Every row on every server in `targets` ({name: target}), interleaved request by request.
    Returns {name: measurements}."""
    ms = {name: {"warmup_route": bs.stream_chat(t, w["warmup"])["route"]} for name, t in targets.items()}

    for name, rs in interleaved(targets, w["decode"], one_decode).items():
        m = ms[name]
        m["decode_tps"] = median([timing(r, "predicted_per_second") for r in rs])
        m["decode_tokens"] = [completion_tokens(r) for r in rs]
        log(f"  {name} decode: {m['decode_tps']:.1f} tok/s ({m['decode_tokens']} tokens)")

    for size, bodies in w["prompt"].items():
        for name, rs in interleaved(targets, bodies, one_decode).items():
            p = ms[name].setdefault("prompt", {})
            p[size] = {"tps": median([timing(r, "prompt_per_second") for r in rs]),
                       "prompt_n": [timing(r, "prompt_n") for r in rs]}
            log(f"  {name} prompt ~{size}: {p[size]['tps']:.1f} tok/s (prompt_n {p[size]['prompt_n']})")

    for name, runs in interleaved(targets, w["concurrent"], one_concurrent).items():
        agg, slowest, tokens, evaluated = [], [], [], []
        for results in runs:
            evaluated.append([(r["timings"] or {}).get("prompt_n") for r in results])
            n = sum(completion_tokens(r) for r in results)
            wall = max(r["end"] for r in results) - min(r["start"] for r in results)
            agg.append(n / wall)
            slowest.append(max(r["first"] or r["total"] for r in results))
            tokens.append([completion_tokens(r) for r in results])
        m = ms[name]
        m["concurrent_tps"] = median(agg)
        m["concurrent_slowest_first_ms"] = median(slowest) * 1000
        m["concurrent_tokens"] = tokens
        m["concurrent_prompt_n"] = evaluated
        log(f"  {name} {args.parallel} streams: {m['concurrent_tps']:.1f} tok/s, slowest first token "
            f"{m['concurrent_slowest_first_ms']:.0f} ms (prompt tokens evaluated {evaluated})")

    for name, runs in interleaved(targets, w["apps"], one_apps).items():
        cold, back, sys_n = [], [], []
        for rs in runs:
            cold += [r["first"] for r in rs[:2]]
            back += [r["first"] for r in rs[2:]]
            sys_n += [(r["usage"] or {}).get("prompt_tokens") for r in rs[:2]]
        m = ms[name]
        m["apps_returning_first_ms"] = median(back) * 1000
        m["apps_cold_first_ms"] = median(cold) * 1000
        m["apps_prompt_tokens"] = sys_n
        log(f"  {name} two apps: returning {m['apps_returning_first_ms']:.0f} ms, cold "
            f"{m['apps_cold_first_ms']:.0f} ms (prompt tokens {sys_n})")

    for name, rs in interleaved(targets, w["short"], one_decode).items():
        ms[name]["short_first_ms"] = median([r["first"] for r in rs]) * 1000
        ms[name]["short_prompt_n"] = [(r["timings"] or {}).get("prompt_n") for r in rs]
        log(f"  {name} short prompt: first token {ms[name]['short_first_ms']:.0f} ms "
            f"(prompt tokens evaluated {ms[name]['short_prompt_n']})")
    return ms


# ---------------------------------------------------------------------------------------------


def rows_of(args, ls, op):
    """(key, label, llama-server value, Outpost value, kind) for the table."""
    def get(m, *path):
        for p in path:
            if m is None:
                return None
            m = m.get(p)
        return m

    def n_of(size):
        ns = [get(m, "prompt", size, "prompt_n") for m in (ls, op)]
        return " / ".join("-" if not n else f"{statistics.median(n):.0f}" for n in ns)

    rows = [("decode_tps", "decode tok/s, one stream (server timings)", get(ls, "decode_tps"), get(op, "decode_tps"),
             "rate")]
    for size in args.prompt_sizes:
        rows.append((f"prompt_tps_{size}", f"prompt tok/s, cold ~{size}-token prompt ({n_of(size)} tokens evaluated; server timings)",
                     get(ls, "prompt", size, "tps"), get(op, "prompt", size, "tps"), "rate"))
    rows += [
        ("concurrent_tps", f"{args.parallel} concurrent streams, aggregate tok/s",
         get(ls, "concurrent_tps"), get(op, "concurrent_tps"), "rate"),
        ("concurrent_slowest_first_ms", f"slowest first token of those {args.parallel}, ms",
         get(ls, "concurrent_slowest_first_ms"), get(op, "concurrent_slowest_first_ms"), "time"),
        ("apps_returning_first_ms", f"first token when two apps with ~{args.system_tokens}-token system prompts "
         "take turns (returning app), ms",
         get(ls, "apps_returning_first_ms"), get(op, "apps_returning_first_ms"), "time"),
        ("short_first_ms", "first token, short prompt, ms", get(ls, "short_first_ms"), get(op, "short_first_ms"),
         "time"),
    ]
    return rows


def fmt(v, kind):
    if v is None:
        return "-"
    return f"{v:.0f}" if kind == "time" else f"{v:.1f}"


def run_all(args, work, result, have_server, have_bench):
    """llama-bench; then llama-server and Outpost both started, the same requests sent to each in
    turn (interleaved, see `interleaved`), both stopped; then llama-bench again.
    Returns (llama-server's measurements or None, Outpost's, the prompt Sizer)."""
    if have_bench:
        result["llama_bench"] = run_llama_bench(args)

    procs, targets = [], {}
    sizer, ls_log, ls_cmd = Sizer(), None, None
    try:
        if have_server:
            proc, target, ready, ls_log, ls_cmd = start_llama_server(args, work)
            procs.append(proc)
            log(f"llama-server healthy after {ready * 1000:.0f} ms")
            sizer = Sizer(target)
            targets["llama-server"] = target
        workload = make_workload(args, sizer)
        proc, sock_path, ready, notes = start_outpost(args, work)
        procs.append(proc)
        log(f"outpost READY=1 after {ready * 1000:.0f} ms")
        targets["outpost"] = sock_path
        base_notes = []
        if args.baseline_outpost_bin:
            proc, base_sock, ready, base_notes = start_outpost(args, os.path.join(work, "baseline"),
                                                               args.baseline_outpost_bin)
            procs.append(proc)
            log(f"baseline outpost READY=1 after {ready * 1000:.0f} ms")
            targets["baseline"] = base_sock
        ms = measure(targets, workload, args)
    finally:
        for proc in procs:
            stop(proc)
    ls, op = ms.get("llama-server"), ms["outpost"]
    if ls:
        ls["facts"] = llama_server_facts(ls_log)
        ls["command"] = " ".join(ls_cmd)
    if op["warmup_route"] != "local":
        notes.append(f"Outpost answered the warm-up by route {op['warmup_route']!r}, not 'local'")
    op["flash_attn"] = args.flash_attn or "default (model.flash_attention unset: auto since 2026-12-07, off on the CPU before)"
    op["parallel"] = "unset (this build has no api.parallel)" if notes and "api.parallel" in notes[0] else str(args.parallel)
    result["notes"] += notes + [f"baseline ({args.baseline_outpost_bin}): {n}" for n in base_notes]
    # The machine's speed can drift during the run (a shared VM). Interleaving spreads a drift over
    # both servers alike; llama-bench once more at the end shows how large it was.
    if have_bench:
        result["llama_bench_end"] = run_llama_bench(args)
    return ls, op, sizer, ms.get("baseline")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the GGUF both servers load")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4, help="llama-server -np and Outpost api.parallel")
    ap.add_argument("--context", type=int, default=4096,
                    help="tokens per request (Outpost model.context; llama-server -c is this times --parallel)")
    ap.add_argument("--outpost-bin", default=os.path.join(ROOT, "target", "release", "outpost"))
    ap.add_argument("--baseline-outpost-bin", help="another Outpost build (e.g. before a change) measured in the "
                    "same interleaved run: its column and its ratio to llama-server are added")
    ap.add_argument("--llama-server", default=default_tool("llama-server"))
    ap.add_argument("--llama-bench", default=default_tool("llama-bench"))
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (medians are shown)")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens of the decode and concurrent requests")
    ap.add_argument("--prompt-tokens", type=int, default=330, help="size of the cold prompt")
    ap.add_argument("--long-prompt", choices=["auto", "on", "off"], default="auto",
                    help="also a ~1300-token cold prompt (auto: for models of 200 MiB and more)")
    ap.add_argument("--system-tokens", type=int, default=1000, help="size of each app's system prompt")
    ap.add_argument("--flash-attn", choices=["on", "off", "auto"],
                    help="set flash attention on both sides (default: each side's own default)")
    ap.add_argument("--router", action="store_true", help="leave Outpost's router on (its time is then included)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON instead of the table")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        ap.error(f"no model at {args.model}")
    if not os.access(args.outpost_bin, os.X_OK):
        ap.error(f"no outpost binary at {args.outpost_bin} (cargo build --release --bin outpost)")
    size_mib = os.path.getsize(args.model) / 2**20
    long_prompt = args.long_prompt == "on" or (args.long_prompt == "auto" and size_mib >= 200)
    args.prompt_sizes = [args.prompt_tokens] + ([1300] if long_prompt else [])
    have_server = bool(args.llama_server) and os.access(args.llama_server, os.X_OK)
    have_bench = bool(args.llama_bench) and os.access(args.llama_bench, os.X_OK)
    if not have_server:
        log(f"llama-server not found ({args.llama_server}): measuring Outpost only "
            "(scripts/build_llama_reference.sh builds it)")

    work = tempfile.mkdtemp(prefix="outpost-bench-serving-")
    result = {"model": os.path.abspath(args.model), "model_mib": round(size_mib, 1), "threads": args.threads,
              "parallel": args.parallel, "context_per_request": args.context, "runs": args.runs,
              "max_tokens": args.max_tokens, "router": args.router, "response_cache": False,
              "flash_attn_requested": args.flash_attn, "llama_bench": None, "llama_bench_end": None, "llama_server": None, "outpost": None,
              "notes": []}

    try:
        ls, op, sizer, base = run_all(args, work, result, have_server, have_bench)
    except BaseException:
        log(f"logs kept in {work} (llama-server.log, outpost.log)")
        raise
    shutil.rmtree(work, ignore_errors=True)
    result["llama_server"], result["outpost"], result["baseline"] = ls, op, base
    result["prompt_sizing"] = {"tokens_per_word": round(sizer.per_word, 3), "template_tokens": round(sizer.overhead, 1),
                               "measured_with_llama_server": sizer.measured}

    rows = rows_of(args, ls, op)
    base_values = [row[3] for row in rows_of(args, ls, base)] if base else [None] * len(rows)
    result["rows"] = []
    for (key, label, a, b, kind), c in zip(rows, base_values):
        ratio = b / a if a and b else None
        result["rows"].append({"key": key, "label": label, "llama_server": a, "outpost": b, "ratio": ratio,
                               "kind": kind, "baseline": c, "baseline_ratio": c / a if a and c else None})
    bench = dict(result["llama_bench"] or {})
    end = result.get("llama_bench_end") or {}
    if bench.get("tg64") and end.get("tg64"):
        # The servers ran between the two llama-bench runs: their mean is the reference.
        bench["tg64_mean"] = (bench["tg64"] + end["tg64"]) / 2
    tg64 = bench.get("tg64_mean") or bench.get("tg64")
    if tg64 and op.get("decode_tps"):
        result["outpost_decode_over_tg64"] = op["decode_tps"] / tg64

    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    print(f"Model {os.path.basename(args.model)} ({size_mib:.0f} MiB), {args.threads} threads, {args.parallel} "
          f"parallel, {args.context} tokens per request, max_tokens {args.max_tokens}, median of {args.runs} run(s)")
    print()
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    if base:
        print("| measurement | llama-server | Outpost | Outpost / llama-server | baseline Outpost | baseline / llama-server |")
        print("|---|---:|---:|---:|---:|---:|")
    else:
        print("| measurement | llama-server | Outpost | Outpost / llama-server |")
        print("|---|---:|---:|---:|")
    for r in result["rows"]:
        line = f"| {r['label']} | {fmt(r['llama_server'], r['kind'])} | {fmt(r['outpost'], r['kind'])} | {x(r['ratio'])} |"
        if base:
            line += f" {fmt(r['baseline'], r['kind'])} | {x(r['baseline_ratio'])} |"
        print(line)
    print()
    print("Ratios of the ms rows are time ratios (below 1: Outpost sooner); of the tok/s rows, speed ratios "
          "(above 1: Outpost faster).")
    if bench.get("tg64"):
        line = (f"Reference: llama-bench {args.threads} threads (flash_attn {bench.get('flash_attn')}): "
                f"pp512 {bench.get('pp512', 0):.1f} tok/s, tg64 {bench['tg64']:.1f} tok/s")
        print(line)
        if end.get("tg64"):
            drift = end["tg64"] / bench["tg64"] - 1
            warn = (" -- the machine's speed drifted: the rows compare the servers with each other fairly "
                    "(interleaved), the tg64 ratios less so") if abs(drift) > 0.05 else ""
            print(f"llama-bench again after both servers: pp512 {end.get('pp512', 0):.1f} tok/s, tg64 "
                  f"{end['tg64']:.1f} tok/s ({drift * 100:+.1f} % decode){warn}")
        ratios = []
        if result.get("outpost_decode_over_tg64"):
            ratios.append(f"Outpost decode / tg64 = {result['outpost_decode_over_tg64']:.2f}x (goal >= 0.95x)")
        if ls and ls.get("decode_tps"):
            ratios.append(f"llama-server decode / tg64 = {ls['decode_tps'] / tg64:.2f}x")
        if ratios:
            which = "the mean of both llama-bench runs" if bench.get("tg64_mean") else "llama-bench's tg64"
            print(f"Against {which} ({tg64:.1f} tok/s): " + "; ".join(ratios))
    elif have_bench:
        print("Reference: llama-bench failed (see stderr)")
    else:
        print("Reference: no llama-bench found (scripts/build_llama_reference.sh builds it)")
    print()
    if ls:
        facts = ls["facts"]
        print(f"- llama-server: flash attention {facts.get('flash_attn', '?')}; {facts.get('slots', '?')}; "
              f"`{ls['command']}`")
    print(f"- Outpost: flash attention {op['flash_attn']}; api.parallel {op['parallel']}; response cache off; "
          + ("router on (its scoring time is included)" if args.router else "router off (pure engine comparison)"))
    print(f"- tokens decoded per one-stream request: llama-server {ls['decode_tokens'] if ls else '-'}, "
          f"Outpost {op['decode_tokens']} (max_tokens {args.max_tokens})")
    print(f"- prompt tokens of the two apps' first requests: llama-server {ls['apps_prompt_tokens'] if ls else '-'}, "
          f"Outpost {op['apps_prompt_tokens']}; cold first token: llama-server "
          f"{fmt(ls['apps_cold_first_ms'] if ls else None, 'time')} ms, Outpost {fmt(op['apps_cold_first_ms'], 'time')} ms")
    for note in result["notes"]:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
