"""rnnkit: the char-level RNN language model of *Dive into Deep Learning*, as real software.

Data flows text → vocab → batches → model → loss → update → samples through the modules
`text`, `data`, `models` (+ `bptt`), `train`, `generate`; `checkpoint`, `runner` and `cli`
make runs of them, and `d2l` keeps the book's names.
"""
from .config import TrainConfig
from .data import load_corpus, random_batches, sequential_batches, split_corpus
from .generate import generate_ids, predict
from .models import RNNScratch, TorchRNN, build_model
from .text import Vocab, clean_lines, tokenize
from .train import clip_gradients, evaluate, perplexity, train_epoch

__version__ = "0.1.0"
__all__ = ["TrainConfig", "Vocab", "RNNScratch", "TorchRNN", "build_model", "clean_lines",
           "tokenize", "load_corpus", "split_corpus", "random_batches", "sequential_batches",
           "perplexity", "clip_gradients", "train_epoch", "evaluate", "predict", "generate_ids"]
