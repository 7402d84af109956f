#!/usr/bin/env bash
# Reproduces the accuracy table of docs/boards.md: for each model, the estimate of
# `outpost validate --json` (`process_bytes`: every part but the board's OS reserve) against the
# peak RSS (VmHWM) of a real `outpost serve` after one request of about 1,000 tokens
# (a prompt of ~984 tokens plus 16 generated; at the default CONTEXT of 1,024 that fills it,
# which is the worst case the estimate describes). A larger CONTEXT with the same request shows
# how much the estimate keeps for the context the request left unused.
#
# Models: the `tiny`, `0.5b` and `1b` presets at q4_k_m (synthesized once into $WORK/models),
# and SmolLM2-135M-Instruct Q4_1 if $SMOLLM2 exists.
#
# Environment:
#   OUTPOST   the binary (default: $CARGO_TARGET_DIR or target, release, else debug)
#   WORK      a directory for models and daemons (default: a new temporary directory)
#   CONTEXT   model.context (default 1024); PARALLEL api.parallel (default 1)
#   THREADS   model.threads (default 2)
#   REQUEST   tokens in the request, prompt plus 16 generated (default 1000)
#   ROUTER    router.enabled, true or false (default false); the estimate counts it when on
#   MODELS    which presets (default "tiny 0.5b 1b")
#   SMOLLM2   the SmolLM2 GGUF (default /work/wt-bench/models/SmolLM2-135M-Instruct.Q4_1.gguf)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
OUTPOST=${OUTPOST:-$( [ -x "$target/release/outpost" ] && echo "$target/release/outpost" || echo "$target/debug/outpost")}
WORK=${WORK:-$(mktemp -d)}
CONTEXT=${CONTEXT:-1024}
PARALLEL=${PARALLEL:-1}
THREADS=${THREADS:-2}
REQUEST=${REQUEST:-1000}
ROUTER=${ROUTER:-false}
MODELS=${MODELS:-"tiny 0.5b 1b"}
SMOLLM2=${SMOLLM2:-/work/wt-bench/models/SmolLM2-135M-Instruct.Q4_1.gguf}
mkdir -p "$WORK/models"
[ -x "$OUTPOST" ] || { echo "no outpost binary at $OUTPOST (cargo build --release)" >&2; exit 1; }

models=()
for preset in $MODELS; do
  path="$WORK/models/$preset-q4_k_m.gguf"
  if [ ! -f "$path" ]; then
    "$OUTPOST" synth-model --preset "$preset" --quant q4_k_m --threads "$THREADS" --out "$path" >&2
  fi
  models+=("$path")
done
if [ -f "$SMOLLM2" ]; then models+=("$SMOLLM2"); fi

echo "| model | parameters | context × slots | request tokens (prompt + generated) | estimate (MiB) | measured VmHWM (MiB) | error |"
echo "|---|---|---|---|---|---|---|"
for model in "${models[@]}"; do
  run="$WORK/run-$(basename "$model" .gguf)"
  rm -rf "$run"; mkdir -p "$run"
  cat >"$run/outpost.toml" <<EOF
[model]
path = "$model"
context = $CONTEXT
threads = $THREADS
batch = 512

[api]
socket = "$run/outpost.sock"
parallel = $PARALLEL

[router]
enabled = $ROUTER

[cache]
enabled = false
path = "$run/cache.db"
EOF
  estimate=$("$OUTPOST" validate --device auto --config "$run/outpost.toml" --json || true)
  RUST_LOG=${RUST_LOG:-info,llama-cpp-2=info} "$OUTPOST" serve --config "$run/outpost.toml" >/dev/null 2>"$run/serve.log" &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null' EXIT
  python3 - "$run/outpost.sock" "$pid" "$model" "$CONTEXT" "$PARALLEL" "$estimate" "$REQUEST" <<'PY'
import http.client, json, os, socket, sys, time

sock_path, pid, model, context, parallel, estimate, request = sys.argv[1:8]
target = int(request) - 16
estimate = json.loads(estimate)

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)

def call(method, path, body=None):
    c = Conn("localhost", timeout=600)
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read()

deadline = time.time() + 300
while True:
    try:
        if call("GET", "/readyz")[0] == 200:
            break
    except OSError:
        pass
    if time.time() > deadline or not os.path.exists(f"/proc/{pid}"):
        sys.exit(f"{model}: the daemon did not become ready (see serve.log)")
    time.sleep(0.2)

words = "the river light stone garden quiet north window market paper engine winter music forest bridge silver".split()
def prompt(n, seed):
    return " ".join(words[(i * 7 + seed * 13 + (i * i) % 11) % len(words)] for i in range(n))

def chat(text, max_tokens):
    status, body = call("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens, "temperature": 0})
    if status != 200:
        sys.exit(f"{model}: request failed {status}: {body[:300]!r}")
    return json.loads(body)["usage"]

# Tokens per word and the chat template's own tokens, from two short requests; then a prompt
# of REQUEST - 16 tokens and 16 generated.
a = chat(prompt(50, 2), 1)["prompt_tokens"]
b = chat(prompt(150, 2), 1)["prompt_tokens"]
per_word = (b - a) / 100
n = int((0.92 * target - (a - 50 * per_word)) / per_word)
# Word pieces vary along the text: measure at 92 % of the target, then scale to it.
probe = chat(prompt(n, 2), 1)["prompt_tokens"]
n = int(n * target / probe)
usage = chat(prompt(n, 2), 16)

status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)
kib = lambda k: int(status[k].split()[0]) * 1024
hwm = kib("VmHWM")
print(f"{os.path.basename(model)}: VmHWM {hwm >> 20} MiB, now RssAnon {kib('RssAnon') >> 20} MiB, "
      f"RssFile {kib('RssFile') >> 20} MiB; estimate parts: "
      + ", ".join(f"{p['name']} {p['bytes'] >> 20}" for p in estimate["parts"]), file=sys.stderr)
est = estimate["process_bytes"]
mib = lambda b: b / 1048576
params = estimate["model"]["parameters"]
print(f"| {os.path.basename(model)} | {params / 1e6:.1f}M | {context} × {parallel} | "
      f"{usage['prompt_tokens']} + {usage['completion_tokens']} | {mib(est):.1f} | {mib(hwm):.1f} | "
      f"{100 * (est - hwm) / hwm:+.1f} % |")
PY
  kill -TERM "$pid"
  wait "$pid" || true
  trap - EXIT
done
