"""The ``pretrain`` stage's internals (seed §1.2–1.6).

- ``scaling``: parameter counts from an architecture, Chinchilla sizing, plan lines (pure Python);
- ``objectives``: causal / MLM / span-corruption / UL2 example builders (pure numpy);
- ``data``: the corpus tokenized once into a memmapped token file, chunked, shuffled, sharded;
- ``model``: transformers models built from the ``architecture:`` block, with the §1.6 initialisation;
- ``loop``: the accelerate training loop, checkpoints and resume, logging, publishing.

Only ``scaling`` is imported at plan time; the rest import numpy/torch and load inside ``run``.
"""
