import random
import re
import runpy
from pathlib import Path

import torch

from rnnkit import d2l

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run_chapter(name, tmp_path, monkeypatch, capsys, epochs=10):
    """Run the chapter's code (with only the import changed) for a few epochs."""
    source = (EXAMPLES / name).read_text()
    assert "\nfrom rnnkit import d2l\n" in source and "\nfrom d2l import" not in source
    script = tmp_path / name
    script.write_text(source.replace("num_epochs, lr = 500, 1", f"num_epochs, lr = {epochs}, 1"))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    random.seed(0)
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out


def test_the_chapters_from_scratch_code_runs_unchanged(tmp_path, monkeypatch, capsys):
    out = _run_chapter("rnn_scratch.py", tmp_path, monkeypatch, capsys)
    assert "torch.Size([10, 28]) 1 torch.Size([2, 512])" in out
    finals = re.findall(r"perplexity (\d+\.\d), (\d+\.\d) tokens/sec on cpu", out)
    assert len(finals) == 2 and all(float(p) < 28 for p, _ in finals)
    assert out.count("time traveller") >= 4
    assert (tmp_path / "animator.png").stat().st_size > 0


def test_the_chapters_concise_code_runs_unchanged(tmp_path, monkeypatch, capsys):
    out = _run_chapter("rnn_concise.py", tmp_path, monkeypatch, capsys)
    assert "torch.Size([35, 32, 256]) torch.Size([1, 32, 256])" in out
    assert len(re.findall(r"perplexity \d+\.\d, \d+\.\d tokens/sec on cpu", out)) == 2
    assert (tmp_path / "train_ch8.png").stat().st_size > 0


def test_book_names_have_the_books_shapes_and_types():
    train_iter, vocab = d2l.load_data_time_machine(32, 35)
    assert len(vocab) == 28 and isinstance(d2l.load_corpus_time_machine()[0], list)
    assert len(d2l.load_corpus_time_machine()[0]) == 170_580
    assert len(d2l.read_time_machine()) == 3221
    X, Y = next(iter(train_iter))
    assert X.shape == Y.shape == (32, 35)
    net = d2l.RNNModelScratch(28, 16, "cpu", d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    logits, state = net(X, net.begin_state(32, "cpu"))
    assert logits.shape == (35 * 32, 28) and isinstance(state, tuple)
    assert [tuple(p.shape) for p in net.params] == [(28, 16), (16, 16), (16,), (16, 28), (28,)]
    gpus = torch.cuda.device_count()         # the book's rule on any machine, GPUs or none
    assert d2l.try_gpu() == (torch.device("cuda:0") if gpus else torch.device("cpu"))
    assert d2l.try_gpu(gpus) == torch.device("cpu")              # one past the last GPU
    assert d2l.try_all_gpus() == ([torch.device(f"cuda:{i}") for i in range(gpus)]
                                  or [torch.device("cpu")])


def test_d2l_grad_clipping_and_sgd_follow_the_book():
    net = d2l.RNNModelScratch(28, 8, "cpu", d2l.get_params, d2l.init_rnn_state, d2l.rnn)
    for p in net.params:
        p.grad = torch.ones_like(p)
    total = sum(p.numel() for p in net.params) ** 0.5
    d2l.grad_clipping(net, 1)
    assert abs(float(torch.sqrt(sum((p.grad ** 2).sum() for p in net.params))) - 1) < 1e-5
    before = [p.detach().clone() for p in net.params]
    d2l.sgd(net.params, 0.5, 1)
    for b, p in zip(before, net.params):
        assert torch.allclose(p, b - 0.5 / total) and not torch.any(p.grad)
