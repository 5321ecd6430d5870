"""``histofetch review``: confirm or correct the weak labels of a run in the browser."""

from histofetch.review.data import ReviewError

__all__ = ["ReviewError"]
