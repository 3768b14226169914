"""`kvq serve` on loopback with the tiny test model, driven by the official openai client
and by raw sockets sending hostile requests. Skips cleanly when the CLI was built without
the server (no libmicrohttpd/cJSON) or the openai package is missing. Every server started
here stops by itself (--exit-after) even if the test process dies."""
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.environ.get("KVQ_CLI", os.path.join(ROOT, "build", "kvq"))
MODEL = os.path.join(ROOT, "tests", "data", "tiny-llama.gguf")
KEY = "test-key-123"

openai = pytest.importorskip("openai")


def _serve_available():
    if not os.path.exists(CLI):
        return False
    r = subprocess.run([CLI, "serve", "--help"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _serve_available(), reason="kvq built without `serve` (libmicrohttpd, cJSON)")


class Server:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [CLI, "serve", "-m", MODEL, "--port", "0", "--exit-after", "240", "-t", "1", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))
                break
            if not line and self.proc.poll() is not None:
                break
        else:
            line = ""
        if not hasattr(self, "port"):
            self.proc.kill()
            raise RuntimeError("kvq serve did not start: " + line)
        # drain stderr so the server never blocks on a full pipe
        self.log = [line]
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}/v1"

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=self.base, api_key=key, max_retries=0, timeout=60, **kw)

    def raw(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def metrics(self):
        status, _, data = self.raw("GET", "/metrics")
        assert status == 200
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode:
            print(f"kvq serve exited with {self.proc.returncode}; its log:\n" + "".join(self.log))
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    s = Server("-np", "2", "-c", "256", "--api-key", KEY, "--chat-template", "chatml", "--timeout", "3")
    yield s
    assert s.stop() == 0, "the server must stop cleanly on SIGTERM"


def chat(client, text, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], **kw)


def test_health_models_metrics(server):
    status, _, data = server.raw("GET", "/health", headers={"Authorization": ""})
    assert status == 200 and json.loads(data)["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny-llama.gguf"]
    m = server.metrics()
    assert m["kvq_slots_total"] == 2
    for name in ("kvq_requests_total", "kvq_tokens_generated_total", "kvq_tokens_per_second", "kvq_kv_bytes",
                 "kvq_kv_fp16_bytes", "kvq_slots_busy", "kvq_queue_length"):
        assert name in m


def test_chat_nonstream_and_stream_agree(server):
    c = server.client()
    r = chat(c, "Tell me a story", extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    text = r.choices[0].message.content
    again = chat(c, "Tell me a story", extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == text, "greedy decoding repeats itself"
    pieces, finish, n_usage = [], None, None
    for chunk in chat(c, "Tell me a story", stream=True, stream_options={"include_usage": True},
                      extra_body={"ignore_eos": True}):
        if chunk.usage:
            n_usage = chunk.usage.completion_tokens
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert "".join(pieces) == text
    assert finish == "length" and n_usage == 12


def test_seeded_sampling_repeats(server):
    c = server.client()
    a = chat(c, "Pick a word", temperature=1.0, top_p=0.9, seed=42, max_tokens=10)
    b = chat(c, "Pick a word", temperature=1.0, top_p=0.9, seed=42, max_tokens=10)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_and_stop(server):
    c = server.client()
    r = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.usage.completion_tokens == 16
    text = r.choices[0].text
    stream_text = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if ch.choices)
    assert stream_text == text
    word = re.search(r"[A-Za-z]{3}", text[1:])
    if word:  # a stop string taken from the greedy text cuts it there
        stop = word.group(0)
        cut = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0,
                                   stop=[stop], extra_body={"ignore_eos": True})
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == text[:text.index(stop)]


def test_api_key(server):
    with pytest.raises(openai.AuthenticationError):
        chat(server.client(key="wrong-key-123"), "hi")
    with pytest.raises(openai.AuthenticationError):
        chat(server.client(key="test-key-12"), "hi")
    status, _, data = server.raw("GET", "/v1/models", headers={"Authorization": ""})
    assert status == 401 and "error" in json.loads(data)


def _assert_400(status, data):
    assert status == 400, (status, data)
    err = json.loads(data)["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_bad_requests(server):
    url = "/v1/chat/completions"
    good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    _assert_400(*server.raw("POST", url, b'{"messages": [{"role": "user", "content": "hi"')[::2])
    _assert_400(*server.raw("POST", url, b'{"messages": [], "max_tokens": 4}')[::2])
    _assert_400(*server.raw("POST", url, json.dumps({**good, "max_tokens": -5}).encode())[::2])
    _assert_400(*server.raw("POST", url, json.dumps({**good, "max_tokens": 100000}).encode())[::2])
    _assert_400(*server.raw("POST", url, json.dumps({**good, "temperature": "hot"}).encode())[::2])
    _assert_400(*server.raw("POST", url, json.dumps({**good, "stream": "yes"}).encode())[::2])
    _assert_400(*server.raw("POST", url, json.dumps({**good, "stop": [1, 2]}).encode())[::2])
    _assert_400(*server.raw("POST", url, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}')[::2])
    _assert_400(*server.raw("POST", url, b'[1, 2, 3]')[::2])
    _assert_400(*server.raw("POST", url, b'{"messages": [{"role": 7, "content": "x"}]}')[::2])
    _assert_400(*server.raw("POST", "/v1/completions", json.dumps({"prompt": "x " * 400}).encode())[::2])
    with pytest.raises(openai.BadRequestError):
        chat(server.client(), "hi", max_tokens=-1)
    # a 10 MB body is refused (413) without the server reading it all: the answer may
    # come (and the connection close) before the client has sent everything
    big = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    big.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: " + str(10 << 20).encode() + b"\r\n\r\n")
    try:
        for _ in range(10):
            big.sendall(b"x" * (1 << 20))
    except OSError:
        pass
    reply = b""
    try:
        while len(reply) < 12:
            part = big.recv(4096)
            if not part:
                break
            reply += part
    except OSError:
        pass
    big.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    # and through the client, whose body is read to the end before the answer
    with pytest.raises((openai.APIStatusError, openai.APIConnectionError)):
        chat(server.client(), "x" * (10 << 20))
    status, _, _ = server.raw("GET", "/nope")
    assert status == 404
    assert chat(server.client(), "still there?", max_tokens=3).usage.completion_tokens >= 0


def test_many_connections_and_slow_client(server):
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        # correct requests keep being answered while 200 idle and one slow connection are open
        r = chat(server.client(), "are you there", max_tokens=4)
        assert r.object == "chat.completion"
        closed = False
        for i in range(min(len(body), 8)):  # one byte a second: the server gives up after --timeout 3
            try:
                slow.sendall(body[i:i + 1])
                time.sleep(1.0)
            except OSError:
                closed = True
                break
        if not closed:
            slow.settimeout(5)
            try:
                closed = slow.recv(1024) == b""
            except (ConnectionResetError, socket.timeout):
                closed = True
        assert closed, "a client that sends one byte a second is timed out"
        slow.close()
        assert chat(server.client(), "and now", max_tokens=4).object == "chat.completion"
    finally:
        for s in socks:
            s.close()


def test_concurrent_conversations_lose_nothing(server):
    prompts = [f"Conversation number {i} begins" for i in range(6)]
    alone = {p: chat(server.client(), p, max_tokens=10, extra_body={"ignore_eos": True}).choices[0].message.content
             for p in prompts}
    results, errors = {}, []

    def run(p):
        try:
            results[p] = chat(server.client(), p, max_tokens=10,
                              extra_body={"ignore_eos": True}).choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    before = server.metrics()
    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == alone, "each conversation answers as it would alone (2 slots, 6 clients)"
    rows = server.metrics()["kvq_decode_rows_total"] - before["kvq_decode_rows_total"]
    assert rows == 6 * 9, "10 tokens a reply: the last is sampled without a decode after it"


def test_prefix_reuse(server):
    c = server.client()
    before = server.metrics()["kvq_prompt_tokens_reused_total"]
    # the server keeps a slot's history only when it comes back whole, token for token:
    # a reply with bytes that are not UTF-8 reaches the client as U+FFFD and cannot. The
    # tiny random model's greedy reply to this prompt is valid UTF-8.
    msgs = [{"role": "user", "content": "Count to three"}]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert "\ufffd" not in r.choices[0].message.content, "pick a prompt whose reply survives a text round trip"
    msgs += [{"role": "assistant", "content": r.choices[0].message.content},
             {"role": "user", "content": "What was it?"}]
    r2 = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    reused = server.metrics()["kvq_prompt_tokens_reused_total"] - before
    assert reused >= r.usage.prompt_tokens, "the second turn evaluates only its new suffix"


def test_disconnect_frees_slot(server):
    before = server.metrics()["kvq_completions_total{outcome=\"cancelled\"}"]
    body = json.dumps({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 200, "stream": True,
                       "ignore_eos": True, "temperature": 0})
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("POST", "/v1/chat/completions", body=body,
              headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    r.fp.readline()
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    for _ in range(100):
        m = server.metrics()
        if m["kvq_completions_total{outcome=\"cancelled\"}"] > before and m["kvq_slots_busy"] == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the slot of a client that left is not freed")


def test_full_queue_answers_503():
    s = Server("-np", "1", "-c", "256", "--queue", "1")
    try:
        body = json.dumps({"prompt": "hello", "max_tokens": 240, "ignore_eos": True, "stream": True})
        conns, statuses = [], []
        for _ in range(4):
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
            c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            statuses.append((r.status, r.getheader("Retry-After")))
            conns.append((c, r))
        assert statuses[0][0] == 200
        assert (503, "1") in statuses, statuses
        for c, r in conns:  # the admitted ones run to the end, nothing lost
            data = r.read().decode()
            if r.status == 200:
                assert data.rstrip().endswith("data: [DONE]")
                assert data.count('"finish_reason":"length"') == 1
            c.close()
        # a request larger than the KV budget is refused at once
        t = Server("-np", "2", "-c", "256", "--kv-budget", "0.25", "--cache-k", "f32")
        try:
            status, _, data = t.raw("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 250}).encode())
            m = t.metrics()
            assert m["kvq_kv_budget_tokens"] == 128  # 2 layers x 2 x 2 heads x 64 x 4 bytes = 2 KiB a token
            assert status == 400 and "budget" in json.loads(data)["error"]["message"]
            status, _, data = t.raw("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 20}).encode())
            assert status == 200 and json.loads(data)["usage"]["completion_tokens"] >= 1
        finally:
            t.stop()
    finally:
        s.stop()
