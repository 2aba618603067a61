"""`rnnkit serve` (the web lab over trained runs) and `rnnkit export` (ONNX)."""
from __future__ import annotations

import sys

from ..errors import UsageError
from .args import choice, choices, path, require, weights_flag


def add_parsers(sub) -> None:
    x = sub.add_parser("export", help="one step of a trained model as an ONNX graph",
                       epilog="example: rnnkit export runs/latest --format onnx --out tm.onnx")
    x.add_argument("run_dir", help="a directory made by 'rnnkit train'")
    x.add_argument("--format", default="onnx", type=choice(["onnx"]), metavar=choices(["onnx"]),
                   help="(default: onnx)")
    x.add_argument("--out", required=True, type=path,
                   help="the .onnx file; its .json goes beside it")
    x.add_argument("--force", action="store_true", help="replace existing files")
    weights_flag(x, ngram=False)
    x.set_defaults(func=cmd_export)

    w = sub.add_parser("serve", help="a local web lab: play with trained runs, see inside them",
                       epilog="example: rnnkit serve runs/latest runs/shakespeare --port 8000")
    w.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs made by 'rnnkit train'")
    w.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    w.add_argument("--port", type=int, default=8000, help="(default: 8000; 0 = any free port)")
    w.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="with --host: also answer requests that name this machine NAME "
                        "(repeatable; '*': any name). Loopback names are always answered")
    w.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import torch

    from threadpoolctl import threadpool_limits

    from ..perf import threads_for
    from ..server import serve
    from ..streams import StreamEngine
    from ..webguard import is_loopback, split_host
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    for name in args.allow_host:
        try:
            if name != "*":
                split_host(name)
        except ValueError:
            raise UsageError(f"--allow-host takes a host name, not {name!r}") from None
    if not is_loopback(args.host):
        print(f"rnnkit: warning: listening on {args.host}: anyone who can reach this machine "
              "on the network can use the lab and its models", file=sys.stderr)
    if "*" in args.allow_host:
        print("rnnkit: warning: --allow-host '*' answers requests for any host name, so a web "
              "page you visit can reach the lab through DNS rebinding", file=sys.stderr)

    def ready(url: str) -> None:
        print(f"rnnkit lab: {url}  (runs: {', '.join(args.run_dirs)}; Ctrl-C stops it)",
              flush=True)

    torch.set_num_threads(threads_for(StreamEngine.BLOCK))  # steps of 16 rows: one thread
    # numpy's OpenBLAS threads spin for ~0.1 s after each threaded call (the units panel's
    # correlations), on the core the next text's trace wants for its second thread: measured,
    # a score took 85-175 ms with them, 70-80 ms without.
    threadpool_limits(1, user_api="blas")
    try:
        serve(args.run_dirs, args.host, args.port, allow_hosts=tuple(args.allow_host),
              ready=ready)
    except KeyboardInterrupt:    # uvicorn shut down cleanly, then passed Ctrl-C on: we are done
        pass
    print("rnnkit lab: stopped", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..export import export_onnx
    from ..run import Run
    require("onnx", "onnx", "rnnkit export")
    run = Run.open(args.run_dir, weights=args.weights)
    model_path, meta_path = export_onnx(run, args.out, force=args.force)
    print(f"wrote {model_path} (one step: ids, state -> logits, next state) and {meta_path}")
    if run.model.mixture:
        print("rnnkit: note: the graph is the network alone; the run's n-gram model (--ngram) "
              "is not part of it", file=sys.stderr)
    return 0
