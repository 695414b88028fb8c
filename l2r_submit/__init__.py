"""l2r_submit: Learn2Reg AbdomenCTCT registration, prediction and evaluation."""

__version__ = "0.3.1"
