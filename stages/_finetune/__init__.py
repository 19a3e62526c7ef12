"""The fine-tuning machinery behind the ``sft`` and ``instruct`` stages.

- ``spec``: config pieces (PEFT methods, EWC, templates, training fields) - pydantic only;
- ``formats`` / ``masking``: rows -> token ids with loss masks (prompt/completion, chat);
- ``methods``: base loading per task, LoRA / QLoRA / prefix (peft), bottleneck adapters, full;
- ``adapter``: the bottleneck adapter (seed §2.4.3) and ``load_with_adapter``;
- ``load``: ``load_finetuned`` for any published output;
- ``ewc``: the diagonal-Fisher penalty (seed §2.3);
- ``heads``: classification and extractive-QA data (seed §2.2);
- ``instruct_data``: task mixing, templates and chain of thought (seed §3.5-3.7);
- ``evaluation``: periodic held-out loss and greedy-decoding accuracy;
- ``train``: the shared training core (TRL SFTTrainer / transformers Trainer);
- ``tiny``: tiny models and tokenizers built locally, for tests and benchmarks.

Heavy libraries are imported inside functions only.
"""
