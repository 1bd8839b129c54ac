"""Sequential recommenders."""

from td3core.models.sasrec import SASRec

__all__ = ["SASRec"]
