"""The official `openai` package talking to outpost over its Unix socket.

Usage: openai_client.py SOCKET. Prints "chat ok" and "stream ok"; exits non-zero on any failure.
"""

import sys

import httpx
import openai


def main() -> int:
    socket = sys.argv[1]
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=60)
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http_client)

    models = client.models.list()
    model_id = models.data[0].id

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    chat = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0)
    choice = chat.choices[0]
    assert choice.message.role == "assistant", choice
    assert isinstance(choice.message.content, str), choice
    assert choice.finish_reason in ("stop", "length"), choice
    assert chat.usage is not None and chat.usage.completion_tokens >= 1, chat.usage
    assert chat.model == model_id
    print("chat ok", repr(choice.message.content))

    stream = client.chat.completions.create(
        model=model_id,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    streamed = "".join(pieces)
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert streamed == choice.message.content, (streamed, choice.message.content)
    print("stream ok", repr(streamed))

    try:
        client.chat.completions.create(model=model_id, messages=[], max_tokens=1)
    except openai.BadRequestError as err:
        assert err.status_code == 400
    else:
        raise AssertionError("empty messages accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
