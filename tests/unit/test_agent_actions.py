"""Voice actions against a real HTTP server on loopback standing in for the n8n webhook: the signed
request, the spoken answer, the fallbacks (error, timeout, unreadable, unreachable), the speech
server's chat route acting on a device intent, and the LLM's `set_device` tool."""
from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from agent.actions import (
    FALLBACK_ERROR,
    FALLBACK_TIMEOUT,
    FALLBACK_UNREADABLE,
    TOOL_NAME,
    ActionClient,
    ActionConfig,
    ActionError,
    DeviceAction,
    from_intent,
    from_tool_call,
)
from agent.outbox import SIGNATURE_HEADER, verify_signature
from agent.speech.responder import intent
from agent.speech_server import create_app
from agent.worker import device_tools

SECRET = "a" * 40
LIGHTS = DeviceAction("turn_on", "light", "kitchen", None, "turn on the lights in the kitchen")


class Webhook:
    """A real HTTP server: records each request, answers with `reply(body)` after `delay` s."""

    def __init__(self, reply: Callable[[dict[str, Any]], web.Response] | None = None, delay: float = 0) -> None:
        self.reply = reply or (lambda body: web.json_response({"say": f"Okay, the {body['room']} lights are on."}))
        self.delay = delay
        self.got: list[tuple[dict[str, Any], dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.got.append((json.loads(raw), dict(request.headers), raw))
        if self.delay:
            await asyncio.sleep(self.delay)   # a slow workflow, on purpose
        return self.reply(self.got[-1][0])


async def serve(hook: Webhook, body: Callable[[str], Awaitable[Any]]) -> Any:
    app = web.Application()
    app.router.add_post("/webhook/voice-action", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await body(f"http://127.0.0.1:{port}/webhook/voice-action")
    finally:
        await runner.cleanup()


def perform(hook: Webhook, action: DeviceAction = LIGHTS, timeout: float = 2.0) -> str:
    async def body(url: str) -> str:
        async with ClientSession() as session:
            return await ActionClient(ActionConfig(url, SECRET, timeout)).perform(action, session)
    return asyncio.run(serve(hook, body))


def test_agent_actions_sends_a_signed_intent_and_speaks_the_workflows_sentence() -> None:
    hook = Webhook()
    assert perform(hook) == "Okay, the kitchen lights are on."
    (sent, headers, raw), = hook.got
    assert verify_signature(SECRET, raw, headers[SIGNATURE_HEADER])
    assert not verify_signature("b" * 40, raw, headers[SIGNATURE_HEADER])
    assert headers["X-Voicestack-Event"] == "voice_action" and headers["X-Voicestack-Event-Id"] == sent["id"]
    assert {k: sent[k] for k in ("type", "action", "device", "room", "value", "words")} == {
        "type": "voice_action", "action": "turn_on", "device": "light", "room": "kitchen", "value": None,
        "words": "turn on the lights in the kitchen"}


def test_agent_actions_reads_n8n_shapes_and_plain_text() -> None:
    assert perform(Webhook(lambda b: web.json_response([{"say": "Done."}]))) == "Done."
    assert perform(Webhook(lambda b: web.Response(text="  Lights on.\n"))) == "Lights on."


@pytest.mark.parametrize("reply, expected", [
    (lambda b: web.json_response({"error": "boom"}, status=500), FALLBACK_ERROR),
    (lambda b: web.json_response({"message": "Workflow was started"}), FALLBACK_UNREADABLE),
    (lambda b: web.json_response({"say": "x" * 1000}), FALLBACK_UNREADABLE),
    (lambda b: web.Response(body=b"\xff\xfe", content_type="text/plain"), FALLBACK_UNREADABLE),
])
def test_agent_actions_falls_back_on_a_bad_answer(reply: Any, expected: str) -> None:
    assert perform(Webhook(reply)) == expected


def test_agent_actions_falls_back_when_the_workflow_is_slower_than_the_timeout() -> None:
    hook = Webhook(delay=3)
    assert perform(hook, timeout=0.5) == FALLBACK_TIMEOUT
    assert len(hook.got) == 1


def test_agent_actions_falls_back_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again before the call: connection refused

    async def main() -> str:
        async with ClientSession() as session:
            return await ActionClient(ActionConfig(f"http://127.0.0.1:{port}/x", SECRET, 1)).perform(LIGHTS, session)
    assert asyncio.run(main()) == FALLBACK_ERROR


@pytest.mark.parametrize("said, expected", [
    ("Turn on the lights in the kitchen.", ("turn_on", "light", "kitchen", None)),
    ("switch the lights off", ("turn_off", "light", "", None)),
    ("Set the thermostat to 21.5 degrees", ("set_temperature", "thermostat", "", 21.5)),
    ("make it warmer", ("raise", "thermostat", "", None)),
    ("What time is it?", None),
])
def test_agent_actions_device_intents_become_actions(said: str, expected: tuple | None) -> None:
    action = from_intent(intent(said), said)
    assert (action and (action.action, action.device, action.room, action.value)) == expected


def test_agent_actions_speech_server_chat_speaks_the_workflow_answer_for_device_intents() -> None:
    hook = Webhook()

    async def body(url: str) -> tuple[str, str]:
        app = create_app(None, None, actions=ActionConfig(url, SECRET, 2))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            async def ask(text: str) -> str:
                resp = await client.post("/v1/chat/completions", json={
                    "model": "voice-responder", "messages": [{"role": "user", "content": text}]})
                return (await resp.json())["choices"][0]["message"]["content"]
            return await ask("Turn on the lights in the kitchen."), await ask("Thank you")
    lights, thanks = asyncio.run(serve(hook, body))
    assert lights == "Okay, the kitchen lights are on."
    assert thanks == "You're welcome." and len(hook.got) == 1   # small talk calls nothing


def test_agent_actions_tool_arguments_are_validated() -> None:
    assert from_tool_call('{"device": "light", "action": "turn_off", "room": "Bedroom"}') == \
        DeviceAction("turn_off", "light", "bedroom", None, "")
    assert from_tool_call({"device": "thermostat", "action": "set_temperature", "value": 20}).value == 20.0
    for bad, fragment in [('{"device": "light", "action": "set_temperature"}', "has no action"),
                          ('{"device": "door", "action": "open"}', "has no action"),
                          ('{"device": "light", "action": "turn_on", "room": "attic"}', "unknown room"),
                          ('{"device": "thermostat", "action": "set_temperature", "value": 90}', "between 5 and 35"),
                          ("not json", "not JSON")]:
        with pytest.raises(ActionError, match=fragment):
            from_tool_call(bad)


def test_agent_actions_llm_tool_calls_the_webhook() -> None:
    hook = Webhook()

    async def body(url: str) -> tuple[str, str]:
        tool, = device_tools(ActionConfig(url, SECRET, 2))
        assert tool.info.name == TOOL_NAME
        ok = await tool(raw_arguments={"device": "light", "action": "turn_on", "room": "kitchen"})
        refused = await tool(raw_arguments={"device": "light", "action": "open"})
        return ok, refused
    ok, refused = asyncio.run(serve(hook, body))
    assert ok == "Okay, the kitchen lights are on."
    assert refused.startswith("Not done:") and len(hook.got) == 1
    assert device_tools(None) == []


@pytest.mark.parametrize("env, fragment", [
    ({"ACTION_URL": "ftp://x"}, "ACTION_URL"),
    ({"ACTION_URL": "http://127.0.0.1/x", "ACTION_SECRET": "short"}, "ACTION_SECRET is 5 characters"),
    ({"ACTION_URL": "http://127.0.0.1/x", "ACTION_SECRET": SECRET, "ACTION_TIMEOUT": "90"}, "ACTION_TIMEOUT"),
])
def test_agent_actions_config_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ActionError, match=fragment):
        ActionConfig.from_env(env)
    assert ActionConfig.from_env({}) is None
