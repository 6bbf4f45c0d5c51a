"""A procedurally generated open-vocabulary world and the zero-shot demo trained on it."""

from lmseg.synthetic.world import SyntheticClass, SyntheticWorld

__all__ = ["SyntheticClass", "SyntheticWorld"]
