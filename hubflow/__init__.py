"""hubflow: declarative dataflow over Hugging Face Hub artifacts."""

__version__ = "0.1.0"
