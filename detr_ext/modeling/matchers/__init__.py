"""Matchers: assign ground-truth objects to predicted queries."""

from .grounding_matcher import GroundingHungarianMatcher
from .hungarian_matcher import HungarianMatcher
from .many_to_one_matcher import ManyToOneMatcher, MixedMatcher, effective_match_number

__all__ = [
    "GroundingHungarianMatcher",
    "HungarianMatcher",
    "ManyToOneMatcher",
    "MixedMatcher",
    "effective_match_number",
]
