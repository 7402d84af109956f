"""The official `ollama` package talking to outpost over its Unix socket.

Usage: ollama_client.py SOCKET. Prints one "<call> ok" line per call; exits non-zero on any
failure. The model has random weights in the tests: only shapes and constraints are checked.
"""

import json
import sys

import httpx
import ollama


def main() -> int:
    client = ollama.Client(host="http://localhost", transport=httpx.HTTPTransport(uds=sys.argv[1]), timeout=120)

    models = client.list().models
    assert len(models) == 1 and models[0].model, models
    name = models[0].model
    print("list ok", name)

    msgs = [{"role": "user", "content": "Name a colour."}]
    r = client.chat(model=name, messages=msgs, options={"num_predict": 8, "temperature": 0})
    assert r.message.role == "assistant" and isinstance(r.message.content, str), r
    assert r.done and r.eval_count >= 1 and r.prompt_eval_count >= 1, r
    print("chat ok", repr(r.message.content))

    parts = list(client.chat(model=name, messages=msgs, stream=True, options={"num_predict": 8, "temperature": 0}))
    assert parts[-1].done and not any(p.done for p in parts[:-1]), parts
    streamed = "".join(p.message.content for p in parts)
    assert streamed == r.message.content, (streamed, r.message.content)
    print("stream ok")

    g = client.generate(model=name, prompt="Once upon a time", options={"num_predict": 6, "temperature": 0})
    assert g.done and isinstance(g.response, str), g
    print("generate ok")

    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    s = client.chat(model=name, messages=[{"role": "user", "content": "Is it?"}], format=schema,
                    options={"num_predict": 100, "temperature": 1.0, "seed": 3})
    assert json.loads(s.message.content)["answer"] in ("yes", "no"), s.message.content
    print("format ok", s.message.content)

    e = client.embed(model=name, input=["How do I reset my password?", "I forgot my password", "Trains to Lyon"])
    v = e.embeddings
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert len(v) == 3 and len(v[0]) == 384 and cos(v[0], v[1]) > cos(v[0], v[2]), e
    print("embed ok")

    try:
        client.chat(model=name, messages=msgs, options={"temperature": 9})
        raise AssertionError("a bad temperature must fail")
    except ollama.ResponseError as err:
        assert err.status_code == 400 and "temperature" in err.error, err
    print("error ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
