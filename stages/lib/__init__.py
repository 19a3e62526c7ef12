"""The shared layer of the stage library: what two or more stage kinds use.

Each module has its own tests under ``tests/stages/lib`` or ``tests/unit``. Kinds import from
here, never from another kind's package. Heavy libraries (torch, transformers, peft) are imported
inside functions, so importing a module here stays cheap.
"""
