"""flip-ctr: FLIP/ALT alignment between ID-based CTR models and pretrained language models."""

__version__ = "0.1.0"
