"""Chapter 9 of the book's Chinese edition (d2l 0.17 names), after deep RNNs: the English–French
data of machine translation, the encoder–decoder interface, the RNN encoder, masked
cross-entropy, training and greedy prediction of seq2seq, and BLEU.

`read_data_nmt` downloads fra-eng.zip the book's way (`d2l.DATA_HUB['fra-eng']`): when the
network does not allow it, it fails with one message naming the file, the URL and what to do.
"""
from __future__ import annotations

import collections
import math
import os

import torch
from torch import nn

from . import (Accumulator, Animator, Timer, Vocab, download_extract, grad_clipping, load_array,
               set_figsize)


# ---- the data ------------------------------------------------------------------------------
def read_data_nmt() -> str:
    """The raw English–French text: one 'english<TAB>french' pair a line."""
    data_dir = download_extract("fra-eng")
    with open(os.path.join(data_dir, "fra.txt"), encoding="utf-8") as f:
        return f.read()


def preprocess_nmt(text: str) -> str:
    """Lower case, no-break spaces → spaces, and a space before , . ! ? glued to a word."""
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return "".join(" " + ch if i > 0 and ch in ",.!?" and text[i - 1] != " " else ch
                   for i, ch in enumerate(text))


def tokenize_nmt(text: str, num_examples: int | None = None):
    """(source, target): each a list of word lists, from the first `num_examples` + 1 lines."""
    source, target = [], []
    for i, line in enumerate(text.split("\n")):
        if num_examples and i > num_examples:
            break
        parts = line.split("\t")
        if len(parts) == 2:
            source.append(parts[0].split(" "))
            target.append(parts[1].split(" "))
    return source, target


def show_list_len_pair_hist(legend, xlabel, ylabel, xlist, ylist):
    """A histogram of the lengths of two lists of sequences, side by side."""
    from . import plt
    set_figsize()
    _, _, patches = plt.hist([[len(x) for x in xlist], [len(y) for y in ylist]])
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    for patch in patches[1].patches:
        patch.set_hatch("/")
    plt.legend(legend)


def truncate_pad(line: list, num_steps: int, padding_token) -> list:
    """`line` cut to `num_steps` items, or padded to them."""
    return line[:num_steps] if len(line) > num_steps else \
        line + [padding_token] * (num_steps - len(line))


def build_array_nmt(lines, vocab, num_steps: int):
    """(ids (n, num_steps) with <eos> then padding, valid lengths (n,))."""
    rows = [truncate_pad(vocab[line] + [vocab["<eos>"]], num_steps, vocab["<pad>"])
            for line in lines]
    array = torch.tensor(rows)
    return array, (array != vocab["<pad>"]).type(torch.int32).sum(1)


def load_data_nmt(batch_size: int, num_steps: int, num_examples: int = 600):
    """(iterator of (X, X_valid_len, Y, Y_valid_len), source vocab, target vocab)."""
    source, target = tokenize_nmt(preprocess_nmt(read_data_nmt()), num_examples)
    reserved = ["<pad>", "<bos>", "<eos>"]
    src_vocab = Vocab(source, min_freq=2, reserved_tokens=reserved)
    tgt_vocab = Vocab(target, min_freq=2, reserved_tokens=reserved)
    src_array, src_valid_len = build_array_nmt(source, src_vocab, num_steps)
    tgt_array, tgt_valid_len = build_array_nmt(target, tgt_vocab, num_steps)
    data_iter = load_array((src_array, src_valid_len, tgt_array, tgt_valid_len), batch_size)
    return data_iter, src_vocab, tgt_vocab


# ---- the encoder-decoder interface and the RNN encoder --------------------------------------
class Encoder(nn.Module):
    """Reads a source sequence into whatever the decoder starts from."""

    def forward(self, X, *args):
        raise NotImplementedError


class Decoder(nn.Module):
    """Turns the encoder's outputs into a state, then writes the target a step at a time."""

    def init_state(self, enc_outputs, *args):
        raise NotImplementedError

    def forward(self, X, state):
        raise NotImplementedError


class EncoderDecoder(nn.Module):
    """An encoder and a decoder: (source, decoder input) → (decoder output, state)."""

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_X, dec_X, *args):
        enc_outputs = self.encoder(enc_X, *args)
        return self.decoder(dec_X, self.decoder.init_state(enc_outputs, *args))


class Seq2SeqEncoder(Encoder):
    """Embedding + multi-layer GRU: (B, T) ids → outputs (T, B, H), state (layers, B, H)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0, **kwargs):
        super().__init__(**kwargs)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, num_hiddens, num_layers, dropout=dropout)

    def forward(self, X, *args):
        X = self.embedding(X).permute(1, 0, 2)        # (T, B, E): time first, as RNNs want
        return self.rnn(X)


# ---- the loss, training, prediction and BLEU ---------------------------------------------
def sequence_mask(X, valid_len, value=0):
    """`X` (B, T, …) with the items at and after each row's valid length set to `value`."""
    mask = torch.arange(X.size(1), dtype=torch.float32, device=X.device)[None, :] \
        < valid_len[:, None]
    X[~mask] = value
    return X


class MaskedSoftmaxCELoss(nn.CrossEntropyLoss):
    """Cross-entropy of (B, T, V) logits against (B, T) labels, padding left out: (B,) means."""

    def forward(self, pred, label, valid_len):
        weights = sequence_mask(torch.ones_like(label), valid_len)
        self.reduction = "none"
        unweighted = super().forward(pred.permute(0, 2, 1), label)
        return (unweighted * weights).mean(dim=1)


def init_seq2seq(m):
    """Xavier-uniform weights for the Linear and GRU layers of a seq2seq model."""
    if type(m) is nn.Linear:
        nn.init.xavier_uniform_(m.weight)
    if type(m) is nn.GRU:
        for name in m._flat_weights_names:
            if "weight" in name:
                nn.init.xavier_uniform_(m._parameters[name])


def train_seq2seq(net, data_iter, lr, num_epochs, tgt_vocab, device):
    """Adam on the masked loss with teacher forcing (<bos> + the target, shifted), Xavier
    initialisation, gradients clipped to norm 1; plots the loss every 10 epochs."""
    net.apply(init_seq2seq)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss = MaskedSoftmaxCELoss()
    net.train()
    animator = Animator(xlabel="epoch", ylabel="loss", xlim=[10, num_epochs])
    for epoch in range(num_epochs):
        timer, metric = Timer(), Accumulator(2)   # summed loss, tokens
        for batch in data_iter:
            optimizer.zero_grad()
            X, X_valid_len, Y, Y_valid_len = [x.to(device) for x in batch]
            bos = torch.tensor([tgt_vocab["<bos>"]] * Y.shape[0], device=device).reshape(-1, 1)
            dec_input = torch.cat([bos, Y[:, :-1]], 1)     # teacher forcing
            Y_hat, _ = net(X, dec_input, X_valid_len)
            l = loss(Y_hat, Y, Y_valid_len)  # noqa: E741  (the book's name)
            l.sum().backward()
            grad_clipping(net, 1)
            optimizer.step()
            with torch.no_grad():
                metric.add(l.sum(), Y_valid_len.sum())
        if (epoch + 1) % 10 == 0:
            animator.add(epoch + 1, (metric[0] / metric[1],))
    print(f"loss {metric[0] / metric[1]:.3f}, {metric[1] / timer.stop():.1f} "
          f"tokens/sec on {device}")


def predict_seq2seq(net, src_sentence, src_vocab, tgt_vocab, num_steps, device,
                    save_attention_weights=False):
    """Greedy translation of one sentence: (target words joined by spaces, attention weights)."""
    net.eval()
    src_tokens = src_vocab[src_sentence.lower().split(" ")] + [src_vocab["<eos>"]]
    enc_valid_len = torch.tensor([len(src_tokens)], device=device)
    src_tokens = truncate_pad(src_tokens, num_steps, src_vocab["<pad>"])
    enc_X = torch.tensor([src_tokens], dtype=torch.long, device=device)       # (1, T)
    dec_state = net.decoder.init_state(net.encoder(enc_X, enc_valid_len), enc_valid_len)
    dec_X = torch.tensor([[tgt_vocab["<bos>"]]], dtype=torch.long, device=device)
    output_seq, attention_weight_seq = [], []
    for _ in range(num_steps):
        Y, dec_state = net.decoder(dec_X, dec_state)
        dec_X = Y.argmax(dim=2)                                                # (1, 1)
        pred = int(dec_X.squeeze(dim=0).item())
        if save_attention_weights:
            attention_weight_seq.append(net.decoder.attention_weights)
        if pred == tgt_vocab["<eos>"]:
            break
        output_seq.append(pred)
    return " ".join(tgt_vocab.to_tokens(output_seq)), attention_weight_seq


def bleu(pred_seq: str, label_seq: str, k: int) -> float:
    """BLEU of a prediction against one label: exp(min(0, 1 - len_label / len_pred)) times the
    n-gram precisions p_n (n ≤ k), each to the power 1/2^n."""
    pred, label = pred_seq.split(" "), label_seq.split(" ")
    score = math.exp(min(0, 1 - len(label) / len(pred)))
    for n in range(1, min(k, len(pred)) + 1):
        label_ngrams = collections.Counter(" ".join(label[i:i + n])
                                           for i in range(len(label) - n + 1))
        matches = 0
        for i in range(len(pred) - n + 1):
            ngram = " ".join(pred[i:i + n])
            if label_ngrams[ngram] > 0:
                matches += 1
                label_ngrams[ngram] -= 1
        score *= math.pow(matches / (len(pred) - n + 1), math.pow(0.5, n))
    return score
