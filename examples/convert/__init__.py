"""The one-line-change example: the same Lightning project trained locally and split."""
