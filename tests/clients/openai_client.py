"""The official `openai` Python package against Easel (run by tests/gateway.rs).

Reads EASEL_BASE (the server, e.g. http://127.0.0.1:8080) and EASEL_KEY; exits 0 and
prints "ok" when every check passed.
"""
import base64
import os
import sys
import urllib.request

import openai
from openai import OpenAI

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def main() -> None:
    client = OpenAI(base_url=os.environ["EASEL_BASE"] + "/v1", api_key=os.environ["EASEL_KEY"])

    ids = [m.id for m in client.models.list()]
    assert "gpt-test" in ids and "dalle-test" in ids, ids

    done = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content == "echo: hi", done
    assert done.model == "gpt-test"
    assert done.usage.prompt_tokens == 100

    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello", text
    assert usage is not None and usage.completion_tokens == 20, usage

    seen = client.chat.completions.create(
        model="gpt-test",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
                ],
            }
        ],
    )
    assert seen.choices[0].message.content == "echo: what is this", seen

    img = client.images.generate(model="dalle-test", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json) == base64.b64decode(PNG)
    linked = client.images.generate(model="dalle-test", prompt="a cat", response_format="url")
    with urllib.request.urlopen(linked.data[0].url) as res:
        assert res.read() == base64.b64decode(PNG)

    edited = client.images.edit(
        model="dalle-test",
        image=("shoe.png", base64.b64decode(PNG), "image/png"),
        prompt="the shoe on a white background",
    )
    assert base64.b64decode(edited.data[0].b64_json) == base64.b64decode(PNG), edited

    try:
        client.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("an unknown model must fail")
    except openai.NotFoundError as e:
        assert "no-such" in str(e), e

    print("ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the Rust test shows whatever failed
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
