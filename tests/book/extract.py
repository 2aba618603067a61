"""Write the PyTorch cells of the book's recurrent chapters, as its own source (d2lbook
markdown) has them, to tests/book/{en,zh}/<section>.json — the notebooks the tests run.

    python tests/book/extract.py EN_CHECKOUT ZH_CHECKOUT    # d2l-ai/d2l-en, d2l-ai/d2l-zh

English cells keep their `tab.selected(...)` branches (the tests give the kernel a `tab` that
selects 'pytorch'); Chinese cells are those marked `#@tab pytorch` or `#@tab all` (unmarked ones are MXNet's).
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EN = {"chapter_recurrent-neural-networks": ["sequence", "text-sequence", "language-model", "rnn",
                                            "rnn-scratch", "rnn-concise"],
      "chapter_recurrent-modern": ["lstm", "gru", "deep-rnn", "bi-rnn",
                                   "machine-translation-and-dataset", "encoder-decoder",
                                   "seq2seq", "beam-search"]}
ZH = {"chapter_recurrent-modern": ["bi-rnn", "machine-translation-and-dataset",
                                   "encoder-decoder", "seq2seq", "beam-search"]}


def english_cells(markdown: str) -> list[str]:
    cells = []
    for code in re.findall(r"```\{\.python \.input[^}]*\}\n(.*?)```", markdown, re.S):
        first, _, rest = code.partition("\n")
        if "d2lbook" in code:
            continue
        if first.startswith("%%tab"):
            tabs = {t.strip() for t in first[len("%%tab"):].split(",")}
            if not tabs & {"pytorch", "all"}:
                continue
            code = rest
        cells.append(code.rstrip("\n"))
    return cells


def chinese_cells(markdown: str) -> list[str]:
    cells = []
    for code in re.findall(r"```\{\.python \.input[^}]*\}\n(.*?)```", markdown, re.S):
        first, _, rest = code.partition("\n")
        if first.startswith("#@tab"):
            tabs = {t.strip() for t in first[len("#@tab"):].split(",")}
            if not tabs & {"pytorch", "all"}:
                continue
            code = rest
        else:                                # unmarked cells are MXNet's, the default tab
            continue
        cells.append(code.rstrip("\n"))
    return cells


def for_pytorch(code: str) -> str:
    """A cell as d2lbook renders it for PyTorch: `if tab.selected(...)` blocks kept (their
    body dedented) where they name pytorch, dropped where they do not."""
    out, lines, i = [], code.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^(\s*)if tab\.selected\((.*)\):\s*$", lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, keep = len(m.group(1)), "'pytorch'" in m.group(2)
        i += 1
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            if keep:
                out.append(lines[i][4:] if lines[i].strip() else lines[i])
            i += 1
    return "\n".join(out)


NOTEBOOKS = {"rnn-scratch": ("en_rnn_scratch", "Recurrent Neural Network Implementation from Scratch"),
             "rnn-concise": ("en_rnn_concise", "Concise Implementation of Recurrent Neural Networks")}
INTRO = ("The PyTorch code of *Dive into Deep Learning* (the English edition, d2l.ai), section "
         "\"{title}\", cell by cell as the book's PyTorch notebook has it, with one change: "
         "`from d2l import torch as d2l` became `from rnnkit.d2l import v1 as d2l`. Run it in a "
         "kernel that has rnnkit: from the rnnkit clone, `.venv/bin/pip install -c constraints.txt "
         "-e '.[notebook]'` (rnnkit is not on the package index; the `notebook` extra adds the "
         "kernel), then open this file in your Jupyter with that kernel — or `.venv/bin/pip "
         "install jupyterlab` and `.venv/bin/jupyter lab notebooks/`. Nothing is downloaded: The "
         "Time Machine ships with rnnkit. The training runs the book's 100 epochs (under a minute "
         "on 2 CPU cores); change `max_epochs=100` to `max_epochs=10` for a quick look.")


def write_notebooks(cells_of_section: dict[str, list[str]]) -> None:
    import nbformat
    for section, (name, title) in NOTEBOOKS.items():
        cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n" + INTRO.format(title=title))]
        for code in cells_of_section[section]:
            code = for_pytorch(code).replace("from d2l import torch as d2l",
                                             "from rnnkit.d2l import v1 as d2l")
            cells.append(nbformat.v4.new_code_cell(code))
        nb = nbformat.v4.new_notebook(cells=cells)
        nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"}}
        path = HERE.parent.parent / "notebooks" / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        print(path.relative_to(HERE.parent.parent))


def main(en: Path, zh: Path) -> None:
    for edition, root, chapters, cells_of in (("en", en, EN, english_cells),
                                              ("zh", zh, ZH, chinese_cells)):
        (HERE / edition).mkdir(exist_ok=True)
        for chapter, sections in chapters.items():
            for section in sections:
                md = (root / chapter / f"{section}.md").read_text(encoding="utf-8")
                out = HERE / edition / f"{section}.json"
                out.write_text(json.dumps(cells_of(md), indent=1, ensure_ascii=False) + "\n",
                               encoding="utf-8")
                print(out.relative_to(HERE.parent.parent), len(cells_of(md)), "cells")
    write_notebooks({s: json.loads((HERE / "en" / f"{s}.json").read_text(encoding="utf-8"))
                     for s in NOTEBOOKS})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
