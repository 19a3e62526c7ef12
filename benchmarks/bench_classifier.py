"""curate's `classifier` filter (datatrove's FastTextClassifierFilter on a local model) against the same
fastText model called by hand on the same documents.

A quality model is trained on generated text (two vocabularies), then ``--docs`` documents are scored
both ways in this process, interleaved, best of ``--repeat``:

- ``datatrove``: ``LocalFastTextClassifierFilter.run`` (datatrove's filter loop: its stats, timing,
  score metadata) over Documents, keep ``hq >= 0.5``;
- ``by hand``: ``model.predict(fasttext_line(text), k=-1)`` and the same threshold, in a plain loop;
- ``by hand, one batch``: one ``model.predict(list_of_lines, k=-1)`` over every document.

The filter predicts a batch (256 documents) per call, as fastText's list form does.

Reports documents per second and the ratio datatrove / by hand (target >= 0.95); both keep the same
documents (checked).

    python benchmarks/bench_classifier.py --docs 20000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--words", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import fasttext
    from datatrove.data import Document
    from fasttext.FastText import _FastText

    from stages.curate.classify import LocalFastTextClassifierFilter
    from stages.lib.fasttext_models import fasttext_line

    rng = random.Random(0)
    good = [f"g{i}" for i in range(2000)]
    bad = [f"b{i}" for i in range(2000)]
    shared = [f"s{i}" for i in range(2000)]

    pools = {id(good): good + shared, id(bad): bad + shared}  # built once: the generator is not what is timed

    def doc(vocab: list[str]) -> str:
        pool = pools[id(vocab)]
        return "\n".join(" ".join(rng.choices(pool, k=20)) for _ in range(args.words // 20))

    tmp = Path(tempfile.mkdtemp(prefix="bench_classifier_"))
    with open(tmp / "train.txt", "w") as fh:
        for _ in range(2000):
            fh.write(f"__label__hq {fasttext_line(doc(good))}\n__label__lq {fasttext_line(doc(bad))}\n")
    fasttext.train_supervised(input=str(tmp / "train.txt"), epoch=5, dim=32, wordNgrams=2, thread=1, seed=0,
                              verbose=0).save_model(str(tmp / "model.bin"))  # fmt: skip
    texts = [doc(good if rng.random() < 0.5 else bad) for _ in range(args.docs)]

    # the documents exist before the filter in both paths (a reader made them); not timed
    documents = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]

    def by_hand() -> list[int]:
        model = _FastText(str(tmp / "model.bin"))
        kept = []
        for i, text in enumerate(texts):
            labels, scores = model.predict(fasttext_line(text), k=-1)
            if dict(zip(labels, scores, strict=True)).get("__label__hq", 0) >= 0.5:
                kept.append(i)
        return kept

    def in_datatrove() -> list[int]:
        step = LocalFastTextClassifierFilter(str(tmp / "model.bin"), keep={"hq": 0.5}, score_prefix="q_")
        return [int(d.id) for d in step.run(iter(documents))]

    def by_hand_batched() -> list[int]:
        model = _FastText(str(tmp / "model.bin"))
        labels, scores = model.predict([fasttext_line(t) for t in texts], k=-1)
        return [i for i, (ls, ss) in enumerate(zip(labels, scores, strict=True))
                if dict(zip(ls, ss, strict=True)).get("__label__hq", 0) >= 0.5]  # fmt: skip

    runs = (("by hand", by_hand), ("by hand, one batch", by_hand_batched), ("datatrove", in_datatrove))
    best = dict.fromkeys((name for name, _ in runs), float("inf"))
    kept = {}
    for _ in range(args.repeat):
        for name, fn in runs:
            start = time.perf_counter()
            kept[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    assert kept["by hand"] == kept["datatrove"] == kept["by hand, one batch"], (
        "the paths kept different documents"
    )
    rate = {k: args.docs / v for k, v in best.items()}
    for k, v in rate.items():
        print(f"{k:20s} {v:10,.0f} docs/s")
    print(f"kept {len(kept['datatrove'])} of {args.docs}")
    print(f"datatrove / by hand (per document) = {rate['datatrove'] / rate['by hand']:.3f}")
    print(f"datatrove / by hand (one batch)    = {rate['datatrove'] / rate['by hand, one batch']:.3f}")


if __name__ == "__main__":
    main()
