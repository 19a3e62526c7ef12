"""Perplexity gating (seed §1.5, quality filtering) as a datatrove filter.

A small reference causal LM scores each document; documents whose perplexity
lies outside ``[min_ppl, max_ppl]`` are dropped. Batched, fp32 on CPU, under
``torch.inference_mode`` (no autograd). The model is loaded lazily inside the
datatrove task, so the step pickles cheaply.
"""

from __future__ import annotations

import math

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class PerplexityFilter(BaseFilter):
    name = "📉 Perplexity"

    def __init__(
        self,
        model_dir: str,
        min_ppl: float | None = None,
        max_ppl: float | None = None,
        batch_size: int = 8,
        max_tokens: int = 512,
        threads: int | None = None,
    ):
        super().__init__(batch_size=batch_size)
        self.model_dir = model_dir
        self.min_ppl = min_ppl
        self.max_ppl = max_ppl
        self.max_tokens = max_tokens
        self.threads = threads
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        from pathlib import Path

        import torch

        from stages.lib.models import load_model
        from stages.lib.tokenizers import load_tokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        folder = Path(self.model_dir)
        self._tokenizer = load_tokenizer(folder, input_name="perplexity model")
        model = load_model(folder, task="causal_lm", input_name="perplexity model", device="cpu")
        self._model = model
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit:
            self.max_tokens = min(self.max_tokens, int(limit))

    def perplexities(self, texts: list[str]) -> list[float | None]:
        """Per-text perplexity over its first ``max_tokens`` tokens (None below 2 tokens)."""
        import torch

        if self._model is None:
            self._load()
        encoded = [
            self._tokenizer(t, truncation=True, max_length=self.max_tokens, add_special_tokens=True)[
                "input_ids"
            ]
            for t in texts
        ]
        result: list[float | None] = [None] * len(texts)
        todo = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        if not todo:
            return result
        width = max(len(encoded[i]) for i in todo)
        ids = torch.zeros((len(todo), width), dtype=torch.long)
        mask = torch.zeros((len(todo), width), dtype=torch.long)
        for row, i in enumerate(todo):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        with torch.inference_mode():
            logits = self._model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:]
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            tmask = mask[:, 1:].float()
            mean_nll = (nll * tmask).sum(dim=1) / tmask.sum(dim=1)
        for row, i in enumerate(todo):
            result[i] = math.exp(float(mean_nll[row]))
        return result

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        out: list[bool | tuple[bool, str]] = []
        for doc, ppl in zip(batch, self.perplexities([d.text for d in batch]), strict=True):
            if ppl is None:
                out.append((False, "too_short"))
                continue
            doc.metadata["perplexity"] = ppl
            self.stat_update("perplexity", value=ppl)
            if self.min_ppl is not None and ppl < self.min_ppl:
                out.append((False, "below_min"))
            elif self.max_ppl is not None and ppl > self.max_ppl:
                out.append((False, "above_max"))
            else:
                out.append(True)
        return out
