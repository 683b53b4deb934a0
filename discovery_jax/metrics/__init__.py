"""Judging generated sets: sample-quality scores, feature extractors, reconstruction
quality, physical statistics, and the evaluator that puts them in one table."""
