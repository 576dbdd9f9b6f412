"""The official `openai` Python SDK against a real Hapax gateway.

The fixture starts `$HAPAX_BIN serve` (default: /var/cache/hapax/target/debug/hapax) on an
ephemeral loopback port with the in-process mock provider and one client key, waits for its
`hapax listening http=ADDR` line, and kills it at teardown.

Run: python3 -m venv /tmp/hapax-venv && /tmp/hapax-venv/bin/pip install openai pytest
     /tmp/hapax-venv/bin/pytest tests/python
"""


import openai
import pytest

from hapax_process import running_gateway

API_KEY = "hk-python-sdk-key"

CONFIG = f"""\
server: {{host: 127.0.0.1, port: 0}}
auth:
  enabled: true
  api_keys:
    - {{name: python-sdk, key: {API_KEY}}}
providers:
  mock:
    type: mock
    model: mock-1
provider_preference: [mock]
"""


@pytest.fixture(scope="module")
def gateway():
    """Yields the gateway's base URL (http://ADDR/v1); its output is printed on failure."""
    with running_gateway(lambda _tmp: CONFIG) as (fields, _tmp):
        yield f"http://{fields['http']}/v1"


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key=API_KEY, max_retries=0, timeout=30)


def test_chat_completion_returns_the_mock_reply(client):
    completion = client.chat.completions.create(
        model="mock-1",
        messages=[{"role": "user", "content": "hello from the sdk"}],
    )
    assert completion.object == "chat.completion"
    assert completion.model == "mock-1"
    message = completion.choices[0].message
    assert message.role == "assistant"
    assert message.content.startswith("Hello from the Hapax mock provider")
    assert message.content.endswith("hello from the sdk")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_completion_raw_response_carries_gateway_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-1",
        messages=[{"role": "user", "content": "headers please"}],
    )
    assert raw.headers["x-hapax-provider"] == "mock"
    assert raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content.startswith("Hello from the Hapax mock provider")


def test_streamed_chat_completion_concatenates_to_the_plain_reply(client):
    messages = [{"role": "user", "content": "stream it words:15"}]
    plain = client.chat.completions.create(model="mock-1", messages=messages)
    stream = client.chat.completions.create(model="mock-1", messages=messages, stream=True)
    pieces = []
    finish_reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(pieces) > 1
    assert "".join(pieces) == plain.choices[0].message.content
    assert "".join(pieces) == " ".join(f"w{i}" for i in range(1, 16))
    assert finish_reasons == ["stop"]


def test_streamed_chat_completion_with_usage(client):
    stream = client.chat.completions.create(
        model="mock-1",
        messages=[{"role": "user", "content": "words:4"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == 4
    assert usage[0].prompt_tokens == 1


def test_models_list_contains_the_mock_model(client):
    models = client.models.list()
    ids = [model.id for model in models]
    assert "mock-1" in ids


def test_wrong_api_key_raises_authentication_error(gateway):
    wrong = openai.OpenAI(base_url=gateway, api_key="hk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(
            model="mock-1", messages=[{"role": "user", "content": "hi"}]
        )
    error = caught.value
    assert error.status_code == 401
    assert error.body["type"] == "authentication_error"
    assert error.request_id and error.body["request_id"] == error.request_id
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_invalid_request_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock-1", messages=[])
    error = caught.value
    assert error.status_code == 400
    assert "messages" in error.body["message"]
    assert error.body["request_id"] == error.request_id

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "hi"}],
            temperature=5,
        )
    assert "temperature" in caught.value.body["message"]


def test_legacy_completions_plain_streamed_and_unservable_members(client):
    plain = client.completions.create(model="mock-1", prompt="legacy hello", max_tokens=16)
    assert plain.object == "text_completion"
    assert plain.choices[0].text.endswith("legacy hello")
    assert plain.usage.total_tokens > 0

    chunks = list(
        client.completions.create(
            model="mock-1",
            prompt="legacy words:3",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "w1 w2 w3"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0

    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="mock-1", prompt="hi", echo=True)
    assert "`echo`" in caught.value.body["message"]
