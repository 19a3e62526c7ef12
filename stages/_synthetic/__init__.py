"""Task families and the gold judge of the ``synthetic`` stage (stdlib only: importing stays light)."""

from stages._synthetic.judge import extract_answer, gold_answer, parse_prompt, score
from stages._synthetic.tasks import FAMILIES, Family, Knobs, families

__all__ = [
    "FAMILIES",
    "Family",
    "Knobs",
    "extract_answer",
    "families",
    "gold_answer",
    "parse_prompt",
    "score",
]
