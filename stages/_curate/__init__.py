"""Helpers of the ``curate`` stage kind (``stages/curate.py``).

``spec`` holds the pydantic sub-models (imported with the stage module, pydantic
only); every other module imports datatrove / pyarrow / torch and is imported
only while the stage runs.
"""
