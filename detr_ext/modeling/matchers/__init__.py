"""Matchers: assign ground-truth objects to predicted queries."""

from .hungarian_matcher import HungarianMatcher

__all__ = ["HungarianMatcher"]
