"""Helpers of the ``evaluate`` and ``merge`` stages: model/adapter loading, the
adapter-base check, example building and scoring. Heavy imports stay inside functions."""
