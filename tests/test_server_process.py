"""`edgeai serve` as a child process: the announced free port, a clean exit on SIGTERM, the loopback rule,
and crash safety (kill -9 during 8 streaming requests, then a restart on the same request log)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import build_tiny_llm_folder  # noqa: E402

KEY = "k-process"
MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("proc") / "model", seed=1, max_pos=1024)[1]


class Child:
    def __init__(self, *args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, "-m", "edgeai.cli", "serve", "--port", "0", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()  # the machine-readable announcement comes first
        if not line:
            raise AssertionError(f"server did not start: {self.p.stderr.read()}")
        self.info = json.loads(line)
        assert self.info["event"] == "listening" and self.info["port"] > 0
        self.client = openai.OpenAI(base_url=self.info["url"], api_key=KEY, max_retries=0, timeout=60)

    def wait(self, timeout=30):
        rc = self.p.wait(timeout)
        return rc, self.p.stderr.read()


def _stream(client, results, i, max_tokens):
    try:
        s = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=max_tokens, temperature=1.0,
                                           seed=i, frequency_penalty=2.0, logit_bias={"0": -100, "2": -100},
                                           stream=True)
        rid, text = None, ""
        for chunk in s:  # ends normally only after data: [DONE]
            rid = chunk.id
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        results[i] = ("done", rid)
    except Exception as exc:  # noqa: BLE001 - the kill cuts the others off
        results[i] = ("cut", repr(exc))


def test_port_zero_announces_and_sigterm_exits_cleanly(folder, tmp_path):
    c = Child("--model", f"tiny={folder}", "--api-key", KEY, "--log", str(tmp_path / "log.sqlite"),
              "--shutdown-timeout", "20")
    assert c.info["host"] == "127.0.0.1" and c.info["url"].endswith(f":{c.info['port']}/v1")
    results = {}
    t = threading.Thread(target=_stream, args=(c.client, results, 0, 600))
    t.start()
    time.sleep(0.3)
    c.p.send_signal(signal.SIGTERM)  # the in-flight request may finish within --shutdown-timeout
    rc, err = c.wait()
    t.join(30)
    assert rc == 0 and "Traceback" not in err, err
    assert results[0][0] == "done"
    db = sqlite3.connect(str(tmp_path / "log.sqlite"))
    assert db.execute("SELECT status FROM requests WHERE id = ?", (results[0][1],)).fetchone() == (200,)


def test_non_loopback_host_needs_a_key_or_insecure(folder):
    r = subprocess.run([sys.executable, "-m", "edgeai.cli", "serve", "--host", "0.0.0.0", "--model", str(folder)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--api-key" in r.stderr and "--insecure" in r.stderr


def test_kill_9_during_8_streams_keeps_every_completed_request(folder, tmp_path):
    log = tmp_path / "log.sqlite"
    args = ("--model", f"tiny={folder}", "--api-key", KEY, "--log", str(log), "--log-text")
    c = Child(*args)
    results = {}
    # 3 short requests and 5 long ones: the server decodes 4 at a time (--batch 4), so the long ones are
    # still streaming (or waiting) when the third short one completes and the kill comes.
    lengths = [40, 60, 80] + [900] * 5
    threads = [threading.Thread(target=_stream, args=(c.client, results, i, lengths[i])) for i in range(8)]
    for t in threads:
        t.start()
    t0 = time.time()
    while sum(1 for r in results.values() if r[0] == "done") < 3 and time.time() - t0 < 60:
        time.sleep(0.01)
    c.p.send_signal(signal.SIGKILL)
    c.p.wait(10)
    for t in threads:
        t.join(30)
    done = [r[1] for r in results.values() if r[0] == "done"]
    assert 3 <= len(done) < 8, results  # killed mid-way: some finished, some were cut off

    c2 = Child(*args)  # the log opens again
    try:
        db = sqlite3.connect(str(log))
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(db.execute("SELECT id, status FROM requests").fetchall())
        assert all(rows.get(rid) == 200 for rid in done), (done, rows)
        print(f"kill -9 during 8 streams: {len(done)} had completed, all {len(done)} in the reopened log "
              f"({len(rows)} rows)")
        r = c2.client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        c2.p.send_signal(signal.SIGTERM)
        rc, err = c2.wait()
    assert rc == 0, err
