"""`edgeai serve` with continuous batching, through the real `openai` client: concurrent streams give the text
they give one at a time, a client that goes away frees its row without touching the others, requests join
while others decode; and /v1/ask's refusal floor."""
import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import edgeai  # noqa: E402

from test_server import KEY, MSG, logged, start  # noqa: E402
from conftest import build_tiny_llm_folder  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("srvb") / "model", seed=2, max_pos=1024, vocab=320)


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    r = start(tiny[1], tmp_path_factory.mktemp("log"), max_batch=4)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def client(srv):
    return srv.client()


def _kwargs(srv, i, max_tokens=24):
    eos = srv.server.llms["tiny"].llm.eos_token_ids
    return dict(model="tiny", max_tokens=max_tokens, temperature=0.0 if i % 3 == 0 else 0.8, seed=i,
                logit_bias={str(t): -100 for t in eos}, presence_penalty=1.0,
                messages=[{"role": "user", "content": f"request {i}: " + "tell me more " * (i % 4 + 1)}])


def _stream_text(client, kw, on_chunk=None):
    text, chunks = "", 0
    with client.chat.completions.create(stream=True, **kw) as s:
        for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                text += ch.choices[0].delta.content
                chunks += 1
                if on_chunk and on_chunk(chunks) is False:
                    break
    return text


def _batch_stats(srv):
    return srv.server.llms["tiny"].llm.batch_stats


def test_concurrent_streams_equal_sequential_ones(srv, client):
    n = 6
    sequential = [_stream_text(client, _kwargs(srv, i)) for i in range(n)]
    before = _batch_stats(srv)
    got, errors = {}, []
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            got[i] = _stream_text(srv.client(), _kwargs(srv, i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [got[i] for i in range(n)] == sequential
    after = _batch_stats(srv)
    steps, rows = after["decode_steps"] - before["decode_steps"], after["decode_rows"] - before["decode_rows"]
    assert rows > steps  # the requests shared forward steps
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert f'edgeai_batch_decode_rows_total{{model="tiny"}} {after["decode_rows"]}' in text


def test_a_client_that_goes_away_frees_its_row_and_the_others_are_unaffected(srv, client):
    ref = [_stream_text(client, _kwargs(srv, i, 40)) for i in (1, 2)]
    gone_id, got = [], {}

    def leaver():
        kw = _kwargs(srv, 9, 900)
        with srv.client().chat.completions.create(stream=True, **kw) as s:
            for k, ch in enumerate(s):
                gone_id.append(ch.id)
                if k == 3:
                    break  # closes the connection mid-stream

    def stayer(i):
        got[i] = _stream_text(srv.client(), _kwargs(srv, i, 40))

    threads = [threading.Thread(target=leaver)] + [threading.Thread(target=stayer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[1], got[2]] == ref
    row = logged(srv, gone_id[0])
    assert row["finish_reason"] == "cancelled" and row["status"] == 499 and row["completion_tokens"] < 900
    for _ in range(200):  # the row is free again
        if _batch_stats(srv)["running"] == 0:
            break
        time.sleep(0.02)
    assert _batch_stats(srv)["running"] == 0


def test_a_request_joins_while_another_decodes(srv, client):
    ref_short = _stream_text(client, _kwargs(srv, 4, 8))
    ref_long = _stream_text(client, _kwargs(srv, 5, 900))
    joined = threading.Event()
    short_done_at = []
    short = {}

    def second():
        short["text"] = _stream_text(srv.client(), _kwargs(srv, 4, 8))
        short_done_at.append(time.monotonic())

    def on_chunk(k):
        if k == 5:  # the long one is decoding: a second request arrives between its steps
            threading.Thread(target=second).start()
            joined.set()

    long_text = _stream_text(client, _kwargs(srv, 5, 900), on_chunk)
    long_done_at = time.monotonic()
    for _ in range(500):
        if short_done_at:
            break
        time.sleep(0.01)
    assert joined.is_set() and short["text"] == ref_short and long_text == ref_long
    assert short_done_at[0] < long_done_at  # it joined and left without waiting for the long one to end


def test_ask_refuses_below_the_retrieval_floor_without_asking_the_model(tiny, tiny_embed_model, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heap.md").write_text("# heapq\n\nUse heapq push and pop to keep a list as a heap queue.\n")
    index = tmp_path / "index"
    from edgeai.retrieval.rag import REFUSAL, RAG
    RAG(None, edgeai.Embedder(tiny_embed_model, threads=1), index).add([docs])
    for floor, refused in ((1.01, True), (-1.0, False)):  # cosine never reaches 1.01; always beats -1
        r = start(tiny[1], tmp_path / f"log{floor}", embed=tiny_embed_model, rag_index=index, rag_min_score=floor)
        try:
            llm = r.server.llms["tiny"].llm
            before = llm._forward.run_s
            resp = httpx.post(r.url + "/v1/ask", json={"question": "how do I use a heap queue?", "max_tokens": 6},
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["refused"] is refused
            if refused:
                assert body["answer"] == REFUSAL and body["sources"] == [] and body["finish_reason"] == "refused"
                assert body["usage"]["completion_tokens"] == 0 and llm._forward.run_s == before  # model not run
                row = logged(r, body["id"])
                assert row["endpoint"] == "ask" and row["finish_reason"] == "refused"
            else:
                assert body["sources"] and body["usage"]["completion_tokens"] > 0
        finally:
            r.stop()


@pytest.mark.parametrize("value", ["0", "65"])
def test_bad_batch_flag_is_a_clear_cli_error(value):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "edgeai.cli", "serve", "--batch", value, "--model", "unused"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--batch must be in [1, 64]" in p.stderr and "Traceback" not in p.stderr
