import json

from rnnkit.cli import main


def test_quick_benchmark_prints_a_table_and_json(capsys, tmp_path):
    assert main(["bench", "--quick", "--json-out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "book loop" in out and "bptt bf16" in out and "64 streams" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "b.json").read_text())
    assert result["train_ratio_vs_book"]["book loop"] == 1.0
    assert set(result["generate_chars_per_s"]) == {"book predict_ch8", "fast, 1 stream",
                                                   "fast, 64 streams"}
    assert all(v > 0 for v in result["train_tokens_per_s"].values())
    assert "targets (issue 23)" in out and "lab read panel, ms" in result["targets"]
    from rnnkit import fastloop
    fp32 = "compiled fp32" if fastloop.library() is not None else "bptt fp32"
    ratio = result["train_tokens_per_s"][fp32] / result["train_tokens_per_s"]["book loop"]
    assert result["targets"]["fp32 x book loop"] == {"measured": ratio, "target": 1.6,
                                                     "share": ratio / 1.6}
    assert set(result["mixture_chars_per_s"]) == {f"{job}, {k}" for k in ("1 thread", "2 threads")
                                                  for job in ("greedy", "sampled", "beam 8",
                                                              "8 streams")}
    assert all(v > 0 for row in result["mixture_chars_per_s"].values() for v in row.values())
    assert "one stream, H=512, GEMV" in out and "numpy loop, 10,000 characters (ms)" in out
    assert all(v > 0 for v in result["greedy_ceiling"].values())
    assert result["fastloop"] == fastloop.status() and "one-stream loops: " in out
    if fastloop.library() is not None:
        assert {f"compiled loop, {k} (ms)" for k in ("1 thread", "2 threads",
                                                     "2 threads, one busy process")} \
            <= set(result["greedy_ceiling"])
