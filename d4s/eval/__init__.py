"""Evaluation of generated videos and Gaussian fields: the metrics of the paper (Appendix D)."""
