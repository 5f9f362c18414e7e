"""Drives the mock LLM provider with the official OpenAI Python SDK.

Usage: python openai_sdk_check.py BASE_URL   (e.g. http://127.0.0.1:8081/v1)

Makes one plain and one streamed chat completion, checks that each content is
an action plan in the orchestrator's schema and that both are the same plan,
then prints OK. Any failure raises, so the exit status is non-zero.
"""

import json
import sys

import openai

SYSTEM = (
    "You are a planning agent. Answer with one JSON object and nothing else. "
    "Tools: search, http_get, summarize."
)
PROMPT = "Find three sources on circuit breakers and summarise them."
TOOLS = {"search", "http_get", "summarize"}


def check_plan(content, what):
    plan = json.loads(content)
    assert isinstance(plan, dict), f"{what}: not an object: {content!r}"
    assert set(plan) == {"action_plan", "reasoning"}, f"{what}: members {sorted(plan)}"
    steps = plan["action_plan"]
    assert 1 <= len(steps) <= 3, f"{what}: {len(steps)} steps"
    for number, step in enumerate(steps, start=1):
        assert step["step"] == number, f"{what}: step {step['step']} at {number}"
        assert step["tool"] in TOOLS, f"{what}: tool {step['tool']!r}"
        assert isinstance(step["args"], dict), f"{what}: args {step['args']!r}"
    assert isinstance(plan["reasoning"], str) and plan["reasoning"], f"{what}: reasoning"
    return plan


def main():
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=30)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ]

    completion = client.chat.completions.create(
        model="gauntlet-mock",
        messages=messages,
        max_tokens=1024,
        response_format={"type": "json_object"},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.finish_reason
    assert completion.usage is not None and completion.usage.total_tokens > 0, completion.usage
    plain = check_plan(choice.message.content, "plain")

    stream = client.chat.completions.create(
        model="gauntlet-mock",
        messages=messages,
        max_tokens=1024,
        response_format={"type": "json_object"},
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for delta_choice in chunk.choices:
            if delta_choice.delta.content:
                pieces.append(delta_choice.delta.content)
            if delta_choice.finish_reason:
                finish = delta_choice.finish_reason
    assert len(pieces) > 1, f"expected several deltas, got {len(pieces)}"
    assert finish == "stop", finish
    assert usage is not None and usage.total_tokens == completion.usage.total_tokens, usage
    streamed = check_plan("".join(pieces), "streamed")
    assert streamed == plain, f"the streamed plan differs: {streamed} != {plain}"

    print("OK")


if __name__ == "__main__":
    main()
