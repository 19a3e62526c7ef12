"""The fine-tuning core that the ``sft`` and ``instruct`` kinds share.

- ``config``: :class:`FinetuneConfig` (the training vocabulary plus data, evaluation, ``peft`` and
  ``regularization``), EWC and instruction templates - pydantic only;
- ``train``: loading the model to train, the TRL ``SFTTrainer`` / transformers ``Trainer`` run, saving;
- ``ewc``: the diagonal-Fisher penalty (seed §2.3) and ``data``: its documents;
- ``evaluation``: periodic held-out loss and greedy-decoding accuracy.

Heavy libraries are imported inside functions only.
"""
