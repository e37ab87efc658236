"""polychromic: diversity-aware LoRA fine-tuning and k-sample quality/diversity evaluation."""

__version__ = "0.1.0"
