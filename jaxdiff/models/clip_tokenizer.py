"""CLIP's byte-level BPE tokenizer, read from a checkpoint's own `vocab.json` + `merges.txt`.

It reproduces the `tokenizers` pipeline that transformers' CLIPTokenizer runs (the checkpoint's
tokenizer.json): NFC, whitespace runs -> one space, lowercase; split into `<|startoftext|>`,
`<|endoftext|>`, the contractions 's 't 're 've 'm 'll 'd, letter runs, single digits and runs of
other non-space characters; bytes -> printable unicode (GPT-2's table); BPE with `</w>` marking a
word's end; then bos + ids + eos, truncated and padded to `max_length`. The character classes
(\\p{L}, \\p{N}) come from `unicodedata`, so no regex engine beyond the standard library is needed.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

from jaxdiff.errors import CheckpointError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL = (BOS, EOS)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
WORD_END = "</w>"
DEFAULT_MAX_LENGTH = 77  # CLIP's context length (text_encoder config max_position_embeddings)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def normalize(text: str) -> str:
    """NFC, every whitespace run one space, lowercase (the tokenizer.json normalizer)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)[0]
    return {"L": "letter", "N": "number"}.get(cat, "other")


def pre_tokenize(text: str) -> list[str]:
    """Words of normalized text: CLIP's pattern `'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
    [^\\s\\p{L}\\p{N}]+`, alternatives tried in that order at each position; characters it does
    not match (whitespace) are dropped. (The pattern's leading `<|startoftext|>|<|endoftext|>`
    words are split again by the byte-level pre-tokenizer into exactly these pieces.)"""
    words, i, n = [], 0, len(text)
    while i < n:
        match = next((s for s in CONTRACTIONS if text.startswith(s, i)), None)
        if match is not None:
            words.append(match)
            i += len(match)
            continue
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":  # one digit per word; letters and other characters run
            while j < n and _kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


class CLIPTokenizer:
    """`tokenizer(prompts) -> (B, max_length) int32 ids`: bos, BPE ids (truncated), eos, padding."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        pad_token: str = EOS,
        max_length: int = DEFAULT_MAX_LENGTH,
    ):
        self.encoder = dict(vocab)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        missing = [t for t in (BOS, EOS, pad_token) if t not in self.encoder]
        if missing:
            raise CheckpointError(f"tokenizer vocabulary lacks the special tokens {missing}")
        self.bos_id, self.eos_id = self.encoder[BOS], self.encoder[EOS]
        self.pad_id = self.encoder[pad_token]
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (bos and eos), got {max_length}")
        self.max_length = int(max_length)
        self._bytes = bytes_to_unicode()
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, folder, max_length: int | None = None) -> CLIPTokenizer:
        """A diffusers `tokenizer/` folder (vocab.json, merges.txt; tokenizer_config.json and
        special_tokens_map.json, when there, for the pad token (SD 2.x pads with "!") and
        model_max_length)."""
        folder = Path(folder)
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: no {name} (a CLIP tokenizer folder has both)")
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{folder / 'vocab.json'}: corrupt JSON ({e})") from e
        if not isinstance(vocab, dict):
            raise CheckpointError(f"{folder / 'vocab.json'}: not a token -> id mapping")
        merges = []
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line or (number == 1 and line.startswith("#version")):
                continue
            pair = line.split()
            if len(pair) != 2:
                raise CheckpointError(f"{folder / 'merges.txt'}:{number}: not a pair: {line!r}")
            merges.append((pair[0], pair[1]))
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins
            if (folder / name).is_file():
                config.update(json.loads((folder / name).read_text(encoding="utf-8")))
        pad = config.get("pad_token", EOS)
        pad = pad.get("content", EOS) if isinstance(pad, dict) else (pad or EOS)
        if max_length is None:
            configured = config.get("model_max_length")  # absent or 1e30 when unset
            ok = isinstance(configured, int) and 2 <= configured <= 4096
            max_length = configured if ok else DEFAULT_MAX_LENGTH
        return cls(vocab, merges, pad_token=pad, max_length=max_length)

    def bpe(self, word: str) -> list[str]:
        """One pre-tokenized word (already byte-mapped) -> its BPE symbols, the last with `</w>`."""
        if word in self._cache:
            return self._cache[word]
        symbols = [*word[:-1], word[-1] + WORD_END]
        while len(symbols) > 1:
            pairs = [
                (self.ranks.get(p, np.inf), i) for i, p in enumerate(zip(symbols, symbols[1:]))
            ]
            rank, _ = min(pairs)
            if rank == np.inf:
                break
            pair = next(p for p in zip(symbols, symbols[1:]) if self.ranks.get(p) == rank)
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        """BPE ids of one prompt, without bos/eos, truncation or padding."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be a str, got {type(text).__name__}")
        ids = []
        # special tokens are matched in the raw text (as tokenizers' added tokens); what the
        # pattern splits off after normalizing ("<|STARTOFTEXT|>" lowercased) is BPE'd as text
        for piece in re.split("(" + "|".join(map(re.escape, SPECIAL)) + ")", text):
            if piece in SPECIAL:
                ids.append(self.encoder[piece])
                continue
            for word in pre_tokenize(normalize(piece)):
                mapped = "".join(self._bytes[b] for b in word.encode("utf-8"))
                ids.extend(self.encoder.get(s, self.eos_id) for s in self.bpe(mapped))
        return ids

    def __call__(self, prompts, max_length: int | None = None) -> np.ndarray:
        """(B, max_length) int32: bos, ids truncated to max_length - 2, eos, then pad tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.max_length if max_length is None else int(max_length)
        out = np.full((len(prompts), length), self.pad_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            ids = [self.bos_id, *self.encode(prompt)[: length - 2], self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids) -> str:
        """Ids -> text (special and pad tokens dropped, `</w>` -> space)."""
        skip = {self.bos_id, self.eos_id, self.pad_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in skip)
        to_byte = {c: b for b, c in self._bytes.items()}
        raw = bytearray(32 if c == " " else to_byte[c] for c in text.replace(WORD_END, " "))
        return raw.decode("utf-8", errors="replace").strip()
