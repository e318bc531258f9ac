"""The book's own pipeline (python -m cnnbench.book.pipeline) and its published figures (results)."""
