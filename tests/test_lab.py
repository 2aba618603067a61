"""`rnnkit serve` over real HTTP: every endpoint, every error, streams that stay independent,
and a server that keeps serving."""
import base64
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from rnnkit import lab
from rnnkit.checkpoint import load_run
from rnnkit.cli import main
from rnnkit.streams import StreamEngine

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a "
        "recondite matter to us.")


def start_lab(*run_dirs, host="127.0.0.1", args=(), stderr=subprocess.PIPE):
    """`rnnkit serve` in a subprocess; (process, base URL) once it listens. (A long benchmark
    passes a file as `stderr`: a pipe nobody reads would block the server once it is full.)"""
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit", "serve", *map(str, run_dirs),
                             "--host", host, "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    line = proc.stdout.readline()
    assert line.startswith("rnnkit lab: http://"), (line, proc.stderr and proc.stderr.read())
    return proc, line.split()[2].rstrip("/")


@contextlib.contextmanager
def lab_over_chapter(run: str | None, epochs: int):
    """(process, base URL, run directory) of `rnnkit serve` over `run`, or over a chapter run
    trained here for `epochs` (the benchmarks' setting); its log goes to a file nobody reads."""
    with tempfile.TemporaryDirectory() as tmp:
        run = run or str(Path(tmp) / "chapter")
        if not (Path(run) / "config.json").exists():
            subprocess.run([sys.executable, "-m", "rnnkit", "train", "--epochs", str(epochs),
                            "--sample-every", "0", "--json", "--out", run], check=True,
                           capture_output=True)
        with open(Path(tmp) / "server.log", "w") as log:      # a pipe nobody reads would block
            proc, url = start_lab(run, stderr=log)
        try:
            yield proc, url, Path(run)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    chapter, lstm = root / "chapter", root / "lstm"
    assert main(["train", "--hidden", "64", "--epochs", "15", "--max-tokens", "5000",
                 "--sample-every", "0", "--out", str(chapter)]) == 0
    assert main(["train", "--cell", "lstm", "--layers", "2", "--embed", "16", "--hidden", "32",
                 "--epochs", "3", "--max-tokens", "3000", "--batch-size", "8", "--clean", "none",
                 "--corpus", str(_corpus(root)), "--sample-every", "0", "--out", str(lstm)]) == 0
    return chapter, lstm


def _corpus(root):
    path = root / "quotes.txt"
    path.write_text('He said "yes (and no)" and left.\nShe said "no".\n' * 200)
    return path


@pytest.fixture(scope="module")
def server(runs):
    proc, url = start_lab(*runs)
    yield url
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def test_runs_are_listed_by_name_with_their_summary(server):
    runs = httpx.get(f"{server}/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["chapter", "lstm"]
    chapter, lstm = runs
    assert chapter["cell"] == "rnn" and chapter["hidden"] == 64 and chapter["vocab"] == 28
    assert chapter["epochs"] == 15 and chapter["best_val_ppl"] > 1
    assert lstm["states"] == ["h", "c", "i", "f", "g", "o"] and lstm["num_layers"] == 2


@pytest.mark.parametrize("args", [
    {"num_chars": 60},
    {"num_chars": 40, "temperature": 0.8, "seed": 3, "num_samples": 3},
    {"num_chars": 40, "temperature": 1.2, "top_k": 5, "top_p": 0.9, "seed": 7, "prefix": "the "},
    {"num_chars": 20, "beam": 4, "num_samples": 2},
])
def test_generate_gives_what_rnnkit_generate_prints(args, server, runs, capsys):
    body = httpx.post(f"{server}/api/runs/chapter/generate", json=args).json()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    capsys.readouterr()
    assert main(["generate", str(runs[0]), *flags]) == 0
    printed = capsys.readouterr().out.splitlines()
    if "beam" in args:
        printed = [line.split("\t")[1] for line in printed]
    assert [s["text"] for s in body["samples"]] == printed


def _stream(url: str, **params) -> dict:
    """The events of one stream: {"chunks": [...], "done": samples, "segments": per sample}."""
    chunks, done, segments = [], None, None
    with httpx.stream("GET", url, params=params, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if kind == "chunk":
                    chunks.append(data)
                elif kind == "done":
                    done, segments = data["samples"], data["segments"]
    return {"chunks": chunks, "done": done, "segments": segments}


def test_a_stream_sends_chunks_and_ends_with_the_texts(server):
    got = _stream(f"{server}/api/runs/chapter/stream", num_chars=80, temperature=0.8, seed=5,
                  num_samples=2)
    assert len(got["done"]) == 2 and all(len(t) == len("time traveller") + 80 for t in got["done"])
    for sample in (0, 1):
        text = "".join(c["text"] for c in got["chunks"] if c["sample"] == sample)
        assert "time traveller" + text == got["done"][sample]
    assert len(got["chunks"]) >= 2


def test_streams_are_independent_of_whoever_else_is_connected(server):
    url = f"{server}/api/runs/chapter/stream"
    alone = [_stream(url, num_chars=150)["done"],
             _stream(url, num_chars=150, temperature=1.0, seed=11, num_samples=3)["done"]]
    results = {}

    def client(i):
        results[i] = _stream(url, num_chars=150 + 7 * i, temperature=0.9, seed=100 + i,
                             num_samples=1 + i % 3)["done"]
    crowd = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in crowd:
        t.start()
    during = [_stream(url, num_chars=150)["done"],
              _stream(url, num_chars=150, temperature=1.0, seed=11, num_samples=3)["done"]]
    for t in crowd:
        t.join()
    assert during == alone                              # greedy and seeded: bitwise the same
    assert results[0] == _stream(url, num_chars=150, temperature=0.9, seed=100)["done"]


@pytest.mark.parametrize("which", [0, 1])
def test_a_fixed_size_block_computes_each_row_independently(which, runs):
    """What StreamEngine relies on: in a BLOCK-row step of rnnkit's stepper (the from-scratch
    RNN's and torch's 2-layer LSTM's), a row's logits and state ignore the other rows."""
    model = load_run(runs[which])[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (6,), generator=g)             # the row's own inputs, in order
    outs = []
    for position in range(0, StreamEngine.BLOCK, 5):
        step = model.stepper(StreamEngine.BLOCK)
        with torch.inference_mode():
            for t in range(len(ids)):
                batch = torch.randint(0, 20, (StreamEngine.BLOCK,), generator=g)
                batch[position] = ids[t]
                logits = step(batch)                               # (BLOCK, V)
        outs.append(logits[position].clone())
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_an_unread_stream_waits_on_a_bounded_backlog_and_then_goes_on_unchanged(runs):
    """A client that stops reading holds BACKLOG chunks, no more; once it reads again its
    stream finishes with the very text it would have made without the pause."""
    from rnnkit.streams import BACKLOG, FLUSH, Stream
    model, vocab, _ = load_run(runs[0])
    engine = StreamEngine(model)

    def open_stream(items):
        return engine.open(Stream(vocab[list("the time")], 10_000, 2, {"temperature": 0.9},
                                  torch.Generator().manual_seed(3), items.append))
    reader: list = []
    stream = open_stream(reader)
    time.sleep(40 * FLUSH)
    made = stream.made
    time.sleep(20 * FLUSH)
    assert len(reader) == BACKLOG and stream.made == made < 10_000       # paused, bounded
    while reader[-1] is not None:                                      # now it reads on
        stream.taken = len(reader)
        engine.wake()
        time.sleep(FLUSH)
    alone: list = []
    free_running = open_stream(alone)
    while not alone or alone[-1] is not None:
        free_running.taken = len(alone)
        time.sleep(FLUSH)
    text = [[i for chunk in items[:-1] for step in chunk for i in step]   # ids, step by step
            for items in (reader, alone)]
    assert text[0] == text[1] and len(text[0]) == 10_000 * 2


def test_score_matches_the_model_and_names_the_guesses(server, runs):
    body = httpx.post(f"{server}/api/runs/chapter/score", json={"text": TEXT}).json()
    tokens = body["tokens"]
    assert "".join(tokens).startswith("the time traveller for so it will")   # cleaned as eval
    n = len(tokens)
    assert len(body["prob"]) == len(body["bits"]) == len(body["top_ids"]) == n
    assert body["prob"][0] is None and all(len(t) == 5 for t in body["top_ids"][1:])
    model, vocab, _ = load_run(runs[0])
    ids = vocab[tokens]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]), model.begin_state(1))
    logp = torch.log_softmax(logits[:-1, 0].double(), 1)
    nll = -logp[torch.arange(n - 1), torch.tensor(ids[1:])]
    assert body["bits_per_char"] == pytest.approx(float(nll.mean()) / np.log(2), rel=1e-5)
    assert body["top_ids"][5] == logp[4].topk(5).indices.tolist()
    assert body["prob"][5] == pytest.approx(float(torch.exp(-nll[4])), abs=1e-5)


def test_units_are_every_units_value_after_each_character(server, runs):
    body = httpx.post(f"{server}/api/runs/chapter/units", json={"text": TEXT}).json()
    T, H = body["shape"]
    assert H == 64 and T == len(body["tokens"])
    q = np.frombuffer(base64.b64decode(body["data"]), np.int8).reshape(T, H)
    acts = q / 127 * np.array(body["scale"])
    model, vocab, _ = load_run(runs[0])
    state, hs = model.begin_state(1), []
    with torch.no_grad():
        for i in vocab[body["tokens"]]:
            _, state = model(torch.tensor([[i]]), state)
            hs.append(state[0][0].numpy())
    assert np.abs(acts - np.array(hs)).max() < 1.01 / 127     # int8 quantisation, no more
    assert set(body["ranking"]) == set(lab.FEATURES)


def test_units_in_binary_are_the_json_units(server):
    """What the page asks for (Accept: application/octet-stream): a uint32 header length, the
    JSON header, the int8 values — the same as the JSON answer's; errors stay JSON."""
    body = {"text": 'He said "yes (and no)" and left.\n', "layer": 1, "state": "c"}
    as_json = httpx.post(f"{server}/api/runs/lstm/units", json=body).json()
    r = httpx.post(f"{server}/api/runs/lstm/units", json=body,
                   headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int.from_bytes(r.content[:4], "little")
    header = json.loads(r.content[4:4 + n])
    assert header == {k: v for k, v in as_json.items() if k != "data"}
    T, H = header["shape"]
    assert len(r.content) == 4 + n + T * H
    assert r.content[4 + n:] == base64.b64decode(as_json["data"])
    bad = httpx.post(f"{server}/api/runs/lstm/units", json={**body, "state": "z"},
                     headers={"Accept": "application/octet-stream"})
    assert bad.status_code == 422 and "state must be one of" in bad.json()["error"]


def test_the_lab_traces_a_text_once_and_keeps_the_last_two(runs, monkeypatch):
    from rnnkit.run import Run
    from rnnkit.server import KEEP_TRACES, LabRun
    lab_run, calls = LabRun("chapter", Run.open(runs[0])), []
    real = lab_run.model.trace
    monkeypatch.setattr(lab_run.model, "trace", lambda ids: calls.append(ids) or real(ids))
    a, b, c = [1, 2, 3], [2, 3, 4], [3, 4, 5]
    first = lab_run.trace(a)
    assert lab_run.trace(a) is first                  # score, then units of the same text
    lab_run.trace(b), lab_run.trace(a)                # two texts kept
    lab_run.trace(c), lab_run.trace(a)                # a third one drops the oldest
    assert KEEP_TRACES == 2 and calls == [a, b, c, a] and len(lab_run.traces) == 2


def test_lstm_units_offer_layers_states_and_gates(server):
    text = 'He said "yes (and no)" and left.\n'
    for layer in (0, 1):
        for state in ("h", "c", "i", "f", "g", "o"):
            body = httpx.post(f"{server}/api/runs/lstm/units",
                              json={"text": text, "layer": layer, "state": state}).json()
            assert body["shape"] == [len(text), 32] and body["state"] == state
    ranking = body["ranking"]
    assert len(ranking["inside quotes"]) == 10 and len(ranking["inside parentheses"]) == 10
    r = httpx.post(f"{server}/api/runs/lstm/units", json={"text": text, "state": "z"})
    assert r.status_code == 422 and "state must be one of h, c, i, f, g, o" in r.json()["error"]


def test_unknown_characters_are_named_with_their_positions(server):
    r = httpx.post(f"{server}/api/runs/lstm/score", json={"text": "He said ¿qué?"})
    assert r.status_code == 422
    unknown = {u["char"]: u["positions"] for u in r.json()["unknown"]}
    assert unknown == {"¿": [8], "q": [9], "u": [10], "é": [11], "?": [12]}
    ok = httpx.post(f"{server}/api/runs/lstm/score", json={"text": "He said ¿qué?",
                                                          "unknown": "unk"})
    assert ok.status_code == 200 and ok.json()["bits_per_char"] > 0


@pytest.mark.parametrize("method,path,body,status,message", [
    ("post", "/api/runs/nope/score", {"text": "ab"}, 404, "no run named 'nope'"),
    ("post", "/api/runs/chapter/score", b"{not json", 400, "not valid JSON"),
    ("post", "/api/runs/chapter/score", [1, 2], 400, "must be a JSON object"),
    ("post", "/api/runs/chapter/score", {"text": "a" * 100_001}, 413, "at most 100,000"),
    ("post", "/api/runs/chapter/score", {"text": ""}, 422, "non-empty"),
    ("post", "/api/runs/chapter/generate", {"num_chars": 10_001}, 422, "num_chars"),
    ("post", "/api/runs/chapter/generate", {"num_samples": 65}, 422, "num_samples"),
    ("post", "/api/runs/chapter/generate", {"temperature": -1}, 422, "temperature"),
    ("post", "/api/runs/chapter/generate", {"top_p": 1.5}, 422, "top_p"),
    ("post", "/api/runs/chapter/generate", {"seed": "x"}, 422, "seed must be a int"),
    ("post", "/api/runs/chapter/generate", {"beam": 2, "num_samples": 3}, 422, "at most beam"),
    ("post", "/api/runs/chapter/generate", {"x": "y" * (1 << 20)}, 413, "over 1,048,576"),
    ("get", "/api/runs/chapter/stream?num_chars=20000", None, 422, "num_chars"),
    ("get", "/api/runs/chapter/stream?top_k=0", None, 422, "top_k"),
    ("get", "/static/../config.json", None, 404, ""),
    ("get", "/api/runs/..%2F..%2Fetc/metrics", None, 404, ""),
])
def test_bad_requests_get_one_clear_4xx_and_the_server_keeps_serving(
        method, path, body, status, message, server):
    kwargs = ({"content": body, "headers": {"content-type": "application/json"}}
              if isinstance(body, bytes) else {"json": body})
    r = getattr(httpx, method)(f"{server}{path}", **({} if body is None else kwargs))
    assert r.status_code == status
    assert message in r.json()["error"]
    assert httpx.get(f"{server}/api/runs").status_code == 200


def test_a_null_field_means_not_given(server):
    """Found by the fuzz test: {"num_chars": null} was a 500; null takes the default."""
    r = httpx.post(f"{server}/api/runs/chapter/generate",
                   json={"num_chars": None, "num_samples": None, "prefix": None, "seed": None})
    assert r.status_code == 200
    [sample] = r.json()["samples"]
    assert len(sample["text"]) == len("time traveller") + 100


def test_metrics_follow_a_run_while_it_writes(server, runs):
    before = httpx.get(f"{server}/api/runs/chapter/metrics").json()["metrics"]
    path = runs[0] / "metrics.jsonl"
    original = path.read_text()
    try:
        with open(path, "a") as f:
            f.write(json.dumps({"epoch": 16, "train_ppl": 5.0, "val_ppl": 6.0,
                                "tokens_per_s": 1.0}) + '\n{"epoch": 17, "trai')
        after = httpx.get(f"{server}/api/runs/chapter/metrics").json()
        assert len(after["metrics"]) == len(before) + 1 and after["config"]["hidden"] == 64
    finally:
        path.write_text(original)


def test_a_slow_stream_does_not_stall_the_others(server):
    url = f"{server}/api/runs/chapter/stream"
    with httpx.Client(timeout=60) as slow:
        with slow.stream("GET", url, params={"num_chars": 10_000, "num_samples": 64}) as r:
            next(r.iter_lines())                           # connected, then never read again
            start = time.perf_counter()
            assert _stream(url, num_chars=200)["done"] is not None
            assert httpx.get(f"{server}/api/runs").status_code == 200
            assert time.perf_counter() - start < 20


def test_the_page_is_small_self_contained_and_offline(server):
    html = httpx.get(server + "/").text
    total = len(html.encode())
    for asset in ("/static/app.js", "/static/style.css"):
        r = httpx.get(server + asset)
        assert r.status_code == 200
        total += len(r.content)
        assert "http://" not in r.text and "https://" not in r.text      # no CDN
    assert "http://" not in html and "https://" not in html and total < 300_000


def test_ctrl_c_stops_cleanly_and_other_hosts_are_warned(runs):
    proc, url = start_lab(runs[0])
    assert httpx.get(url + "/api/runs").status_code == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.stderr.read()
    proc, _ = start_lab(runs[0], host="0.0.0.0")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert "anyone who can reach this machine" in proc.stderr.read()


def test_generate_and_stream_give_the_samples_in_segments_marking_copies(server, runs):
    """The page's underlines: pieces whose concatenation is the sample, a piece inside a copy
    of the training text saying where it occurs (the same report as `rnnkit generate`)."""
    from rnnkit.run import Run
    r = httpx.post(f"{server}/api/runs/lstm/generate",
                   json={"prefix": "He said", "num_chars": 120})
    [sample] = r.json()["samples"]
    segments = sample["segments"]
    assert "".join(s["text"] for s in segments) == sample["text"]
    run = Run.open(runs[1])
    [mine] = run.generate("He said", 120)
    report = run.copies(mine)
    copied = sum(len(s["text"]) for s in segments if s["copy"] is not None)
    assert (copied > 0) == (report.copied_share > 0)
    for s in segments:
        if s["copy"] is not None:
            assert s["text"].strip() in s["copy"]["context"]
    got = _stream(f"{server}/api/runs/lstm/stream", num_chars=120, prefix="He said")
    assert got["done"] == [sample["text"]] and got["segments"] == [segments]
