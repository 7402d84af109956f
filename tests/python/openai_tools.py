"""The official `openai` client's tool loop against outpost on the real model: a required call
(arguments valid for the schema), the same call streamed and accumulated by the client's own
stream helper, the tool's result sent back, and the final answer.

Usage: openai_tools.py SOCKET. Prints "call ok", "stream ok" and "answer ok".
"""

import json
import sys

import httpx
import openai

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": False},
    },
}]


def main() -> int:
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), timeout=120)
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http_client)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="local", messages=messages, tools=TOOLS,
                                           tool_choice="required", temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and args["city"], args
    print("call ok", call.function.arguments)

    # Streamed: the client's helper accumulates the tool-call deltas (it wants `strict` tools).
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    with client.chat.completions.stream(model="local", messages=messages, tools=strict,
                                        tool_choice="required", temperature=0, max_tokens=80) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        streamed = stream.get_final_completion()
    assert streamed.choices[0].finish_reason == "tool_calls", streamed
    s_call = streamed.choices[0].message.tool_calls[0]
    assert s_call.id and s_call.function.name == call.function.name, s_call
    assert json.loads(s_call.function.arguments) == args, (s_call.function.arguments, args)
    assert s_call.function.parsed_arguments == args, s_call
    assert len(deltas) > 1, f"arguments came in {len(deltas)} delta(s)"
    print("stream ok", len(deltas), "argument deltas")

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": args["city"], "sky": "sunny", "celsius": 21})})
    final = client.chat.completions.create(model="local", messages=messages, tools=TOOLS, tool_choice="none",
                                           temperature=0, max_tokens=60)
    text = final.choices[0].message.content
    assert isinstance(text, str) and text.strip(), final
    assert not final.choices[0].message.tool_calls, final
    print("answer ok", repr(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
