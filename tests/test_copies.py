"""What a sample copied from its run's training text: exact against a brute-force reference,
long for a model that memorised its text and short for an untrained one, reported by generate,
eval and train, and kept beside the run in a file that is checked like every other."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.cli import main
from rnnkit.copies import CopyIndex


def brute_force(text: list[int], sample: list[int], generated_from: int, copy_min: int):
    """For each i the longest L with sample[i:i+L] a substring of text, by trying every L."""
    def occurs(part):
        n = len(part)
        return any(text[j:j + n] == part for j in range(len(text) - n + 1))
    lengths = []
    for i in range(len(sample)):
        L = 0
        while i + L < len(sample) and occurs(sample[i:i + L + 1]):
            L += 1
        lengths.append(L)
    longest = max([L for i, L in enumerate(lengths) if i + L > generated_from], default=0)
    covered = [any(i <= j < i + L for i, L in enumerate(lengths) if L >= copy_min)
               for j in range(len(sample))]
    made = covered[generated_from:]
    return longest, (sum(made) / len(made) if made else 0.0)


@settings(max_examples=150, deadline=None)
@given(text=st.lists(st.integers(0, 3), max_size=60), sample=st.lists(st.integers(0, 3),
       max_size=30), cut=st.integers(0, 30), copy_min=st.integers(1, 6),
       wide=st.booleans())
def test_longest_copy_and_copied_share_are_exact(text, sample, cut, copy_min, wide):
    dtype = np.uint32 if wide else np.uint8        # word runs' ids, or characters'
    if wide:
        text, sample = [t * 70_000 for t in text], [t * 70_000 for t in sample]
    generated_from = min(cut, len(sample))
    index = CopyIndex.build(np.array(text, dtype=dtype))
    report = index.report(np.array(sample, dtype=dtype), generated_from, copy_min)
    longest, share = brute_force(text, sample, generated_from, copy_min)
    assert report.longest == longest
    assert report.copied_share == pytest.approx(share, abs=1e-12)
    i, at, n = report.sample_at, report.train_at, report.longest
    assert text[at:at + n] == sample[i:i + n]                 # it is where it says it is
    for a, b, where in report.spans:
        assert b - a >= copy_min and text[where:where + b - a][:copy_min] == sample[a:a + copy_min]


TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a "
        "recondite matter to us. His grey eyes shone and twinkled, and his usually pale face "
        "was flushed and animated.\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A model that learnt a short text by heart, and the same model untrained."""
    root = tmp_path_factory.mktemp("copies")
    corpus = root / "t.txt"
    corpus.write_text(TEXT * 60)
    common = ["--corpus", str(corpus), "--clean", "none", "--hidden", "96", "--batch-size",
              "8", "--num-steps", "40", "--sample-every", "0", "--lr", "2", "--end-on", "last"]
    assert main(["train", *common, "--epochs", "12", "--out", str(root / "memorised")]) == 0
    assert main(["train", *common, "--epochs", "0", "--out", str(root / "untrained")]) == 0
    return root / "memorised", root / "untrained"


def _generate_json(run, capsys, *args):
    capsys.readouterr()
    assert main(["generate", str(run), "--num-chars", "300", "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_model_that_memorised_its_text_reports_long_copies(runs, capsys):
    memorised, untrained = runs
    [sample] = _generate_json(memorised, capsys, "--prefix", "The Time")
    assert sample["copies"]["longest"] >= 100 and sample["copies"]["copied_share"] > 0.8
    assert sample["settings"]["prefix"] == "The Time" and sample["copies"]["copy_min"] == 20
    [sample] = _generate_json(untrained, capsys, "--prefix", "The Time")
    assert sample["copies"]["longest"] < 12 and sample["copies"]["copied_share"] == 0.0


def test_generate_eval_and_train_report_copies_in_one_line_each(runs, capsys):
    memorised, _ = runs
    capsys.readouterr()
    assert main(["generate", str(memorised), "--prefix", "His grey", "--num-chars", "80"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("His grey") and err.count("\n") == 1
    assert err.startswith("  copied: longest") and "training text" in err and "20+ chars" in err
    assert main(["generate", str(memorised), "--num-chars", "80", "--no-copy-check"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", str(memorised), "--num-chars", "80", "--copy-min", "0"]) == 2
    assert main(["eval", str(memorised), "--samples", "4", "--num-chars", "100"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("copies in 4 samples of 100 chars") and "\n" not in line


def test_the_closing_samples_of_train_carry_the_figure(tmp_path, capsys):
    assert main(["train", "--hidden", "16", "--epochs", "1", "--max-tokens", "2000",
                 "--sample-every", "0", "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4].startswith("time traveller") and lines[-2].startswith("traveller")
    for line in (lines[-3], lines[-1]):
        assert line.startswith("  copied: longest") and line.endswith("copies of 20+ chars")


def _read_index(run):
    from safetensors import safe_open
    with safe_open(str(run / "copies.safetensors"), framework="np") as f:
        return f.metadata(), f.get_tensor("sa")


def test_the_index_survives_resume_and_is_refused_when_tampered_with(runs, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    before = (run / "copies.safetensors").read_bytes()
    meta, sa = _read_index(run)
    assert main(["train", "--resume", str(run), "--epochs", "13"]) == 0
    meta2, sa2 = _read_index(run)                          # the same slice, the same index
    assert meta2 == meta and np.array_equal(sa2, sa)
    assert _generate_json(run, capsys)[0]["copies"]["longest"] > 0
    data = bytearray(before)
    data[-5] ^= 0xFF                                       # one byte of the suffix array
    (run / "copies.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["generate", str(run), "--num-chars", "20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "copy index" in err[0] and "delete it" in err[0]
    (run / "copies.safetensors").unlink()                  # ... and it is built again
    assert _generate_json(run, capsys)[0]["copies"]["longest"] > 0
