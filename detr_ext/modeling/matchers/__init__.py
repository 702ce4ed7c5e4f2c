"""Matchers: assign ground-truth objects to predicted queries."""

from .hungarian_matcher import HungarianMatcher
from .many_to_one_matcher import ManyToOneMatcher, MixedMatcher, effective_match_number

__all__ = ["HungarianMatcher", "ManyToOneMatcher", "MixedMatcher", "effective_match_number"]
