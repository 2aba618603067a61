"""rnnkit: the char-level RNN language model of *Dive into Deep Learning*, as real software.

Data flows text → vocab → batches → model → loss → update → samples through the modules
`text`, `encode` (files → cached ids), `data`, `models` (+ `bptt`, `ngram`), `train`,
`generate` (+ `sampling`); `checkpoint`, `run/` (`Run`) and `cli/` make runs of them, `export`,
`lab` + `server` (+ `labrequests`, `webguard`, `streams`) serve them, and `d2l` keeps the
book's names.
Names are imported on first use, so `rnnkit prepare` and `rnnkit vocab` start without torch.
"""
import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "TrainConfig": "config", "Vocab": "text", "clean_lines": "text", "tokenize": "text",
    "load_corpus": "data", "split_corpus": "data", "random_batches": "data",
    "sequential_batches": "data", "RNNScratch": "models", "GRUScratch": "models",
    "LSTMScratch": "models", "TorchRNN": "models", "build_model": "models",
    "perplexity": "train", "clip_gradients": "train", "train_epoch": "train",
    "evaluate": "train", "predict": "generate", "generate_ids": "generate",
    "prepare": "encode", "load_run": "checkpoint", "beam_search": "generate",
    "train_run": "run", "Run": "run", "export_onnx": "export", "LanguageModel": "models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
