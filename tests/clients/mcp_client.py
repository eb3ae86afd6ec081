"""Easel's MCP endpoint through the official `mcp` Python package: initialize, list
the tools, call a published skill and the alt text tool. Prints `ok` on success.

EASEL_BASE: the server's base URL; EASEL_KEY: an API key with the skills scope;
EASEL_SKILL: the slug of a published skill taking `topic` and answering `answer`;
EASEL_PNG: a PNG in base64 for the alt text tool.
"""

import asyncio
import os
import sys

from mcp import ClientSession
import mcp.client.streamable_http as transport


def connect(url, key):
    headers = {"Authorization": f"Bearer {key}"}
    if hasattr(transport, "streamable_http_client") and hasattr(transport, "create_mcp_http_client"):
        client = transport.create_mcp_http_client(headers=headers)
        return transport.streamable_http_client(url, http_client=client)
    return transport.streamablehttp_client(url, headers=headers)


def attr(obj, snake, camel):
    """A field under either name (the package renamed its fields to snake_case in 2.x)."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


async def main():
    base, key, skill = os.environ["EASEL_BASE"], os.environ["EASEL_KEY"], os.environ["EASEL_SKILL"]
    async with connect(f"{base}/mcp", key) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert attr(init, "server_info", "serverInfo").name == "easel", init
            assert attr(init.capabilities.tools, "list_changed", "listChanged"), init.capabilities
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert skill in tools, list(tools)
            assert "alt_text" in tools, list(tools)
            schema = attr(tools[skill], "input_schema", "inputSchema")
            assert schema["properties"]["topic"]["type"] == "string", schema
            assert schema["required"] == ["topic"], schema

            result = await session.call_tool(skill, {"topic": "otters"})
            assert not attr(result, "is_error", "isError"), result
            assert "answer: echo: Tell me about otters" in texts(result), texts(result)

            bad = await session.call_tool(skill, {})
            assert attr(bad, "is_error", "isError"), bad
            assert any("topic" in t for t in texts(bad)), texts(bad)

            alt = await session.call_tool("alt_text", {"image": os.environ["EASEL_PNG"], "language": "en"})
            assert not attr(alt, "is_error", "isError"), alt
            assert "SALE" in texts(alt)[0], texts(alt)
    print("ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"assertion failed: {e!r}", file=sys.stderr)
        raise
