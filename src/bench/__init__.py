"""`python -m src.bench`: ftlab measured against a plain PyTorch loop and HF Trainer."""
