"""The README followed word by word: every command block, in order, in a copy of the clone with
a fresh venv made the README's way (its Quick start). Only the sizes are cut (`cut`: fewer
epochs, a shorter time budget, a free port), so a command that does not chain, a missing install
step or a stale file name fails here instead of for a user. Lines not run say why (`NOT_RUN`)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit.distributed import free_port

ROOT = Path(__file__).resolve().parent.parent
EPOCHS, MORE_EPOCHS, BUDGET = 2, 3, 5      # for every `rnnkit train`; a resume gets one more
SNIPPET_SIZES = {"range(50)": "range(2)", "epochs=20": "epochs=2", '{"epochs": 30}': '{"epochs": 3}'}
NOT_RUN = {  # a line holding this is left out, for this reason
    "pytest": "the test suite: this test runs inside it",
    "torchrun": "two machines: tests/test_distributed.py runs these two commands on loopback",
    "benchmarks/": "a benchmark of minutes, not a test",
    "rnnkit bench": "a benchmark of a minute; tests/test_bench.py covers it",
}
PRELUDE = """set -euo pipefail
servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true; wait' EXIT
up() {  # until the lab on port $1 answers
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$1/api/runs" && return; sleep 0.1; done
  echo "the lab on port $1 did not answer" >&2; return 1
}
"""


def blocks(readme: str) -> list[tuple[str, str]]:
    """The README's ```bash and ```python blocks, in order (output blocks have no language)."""
    return re.findall(r"```(bash|python)\n(.*?)```", readme, re.S)


def cut(line: str, ports: dict[str, int]) -> str:
    """One bash line with the sizes cut; `rnnkit serve` goes to the background until it answers."""
    if any(key in line for key in NOT_RUN):
        return ": " + shlex.quote(f"left out: {next(v for k, v in NOT_RUN.items() if k in line)}")
    code, comment = re.match(r"^(.*?)(\s+#\s.*)?$", line).groups()
    for port, free in ports.items():
        code = code.replace(f":{port}", f":{free}").replace(f"--port {port}", f"--port {free}")
    if "rnnkit train" in code:
        code = re.sub(r"--time-budget \d+", f"--time-budget {BUDGET}", code)
        code += f" --epochs {MORE_EPOCHS if '--resume' in code else EPOCHS}"
    if re.match(r"\s*rnnkit serve\b", code):
        port = re.search(r"--port (\d+)", code)
        if not port:
            code, port = code + f" --port {ports['8000']}", ports["8000"]
        else:
            port = port.group(1)
        code = f"{code} 2>>serve.log & servers+=($!); up {port}"
    if code.lstrip().startswith("curl "):      # an error answer fails the line
        code = code.replace("curl ", "curl -sS --fail-with-body ", 1)
    return code + (comment or "")


def scripts(readme: str, ports: dict[str, int]) -> list[tuple[str, str]]:
    """(language, text) to run in order; a block of curl calls joins the one before it (the
    lab that block started is still up)."""
    out = []
    for lang, text in blocks(readme):
        if lang == "python":
            for small, big in ((v, k) for k, v in SNIPPET_SIZES.items()):
                text = text.replace(big, small)
            out.append((lang, text))
            continue
        text = re.sub(r"\\\n\s*", "", text)          # one line per command
        lines = [cut(line, ports) for line in text.splitlines()]
        commands = [line for line in text.splitlines() if line.strip() and
                    not line.startswith((" ", "#"))]
        if commands and all(c.startswith("curl ") for c in commands) and out:
            out[-1] = ("bash", out[-1][1] + "\n" + "\n".join(lines))
        else:
            out.append(("bash", "\n".join(lines)))
    return out


def _user_files(home: Path) -> None:
    """What the README asks the user to bring: notes.txt, other.txt, big.txt."""
    book = (ROOT / "rnnkit" / "data" / "timemachine.txt").read_text(encoding="utf-8")
    (home / "notes.txt").write_text(book[20_000:60_000], encoding="utf-8")
    (home / "other.txt").write_text(book[90_000:95_000], encoding="utf-8")
    (home / "big.txt").write_text(book, encoding="utf-8")


def _fresh_clone(tmp: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the README check copies the tracked files")
    home = tmp / "clone"
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, home / name)
    return home


def _clean_env() -> dict[str, str]:
    """The shell of a user who has not activated anything (this test's venv kept out)."""
    ours = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != ours)
    return env


def test_the_readme_cut_cases():
    ports = {"8000": 18001, "9000": 19001}
    assert cut("rnnkit train --epochs 50 --out runs/tm   # the chapter", ports) == \
        "rnnkit train --epochs 50 --out runs/tm --epochs 2   # the chapter"
    assert cut("rnnkit train --resume runs/tm --epochs 100", ports).endswith("--epochs 3")
    assert "--time-budget 5 " in cut("rnnkit train --time-budget 300 --out x", ports)
    assert cut("rnnkit serve runs/tm  # lab", ports) == \
        "rnnkit serve runs/tm --port 18001 2>>serve.log & servers+=($!); up 18001  # lab"
    assert cut("curl localhost:8000/api/runs", ports) == \
        "curl -sS --fail-with-body localhost:18001/api/runs"
    assert cut(".venv/bin/python -m pytest -q", ports).startswith(": 'left out")
    assert cut("rnnkit bench --quick  # x", ports) == \
        ": 'left out: a benchmark of a minute; tests/test_bench.py covers it'"


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl: the README's API calls use it")
def test_every_command_of_the_readme_runs_in_order_on_a_fresh_clone(tmp_path):
    home = _fresh_clone(tmp_path)
    _user_files(home)
    env = _clean_env()
    ports = {"8000": free_port(), "9000": free_port()}
    for i, (lang, text) in enumerate(scripts((home / "README.md").read_text(), ports)):
        if lang == "python":
            cmd = [str(home / ".venv" / "bin" / "python"), "-c", text]
        else:
            activate = "source .venv/bin/activate\n" if (home / ".venv").exists() else ""
            cmd = ["bash", "-c", PRELUDE + activate + text]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True,
                              timeout=600)
        print(f"block {i + 1}: {time.monotonic() - start:.1f} s")
        assert proc.returncode == 0, (
            f"README block {i + 1} ({lang}) failed:\n{text}\n--- stdout\n{proc.stdout[-1500:]}"
            f"\n--- stderr\n{proc.stderr[-2500:]}")
    assert (home / "model.onnx").exists() and (home / "runs" / "notes-lstm").is_dir()
