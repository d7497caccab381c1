"""Helpers shared by the test suite: generated videos and checkpoints, planted models, the reference study's formulas, the fuzz corpus and mutations, and the reliability table."""
