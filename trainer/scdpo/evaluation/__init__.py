"""Evaluation harness: held-out and adversarial prompt suites, training-free baselines, metrics and reports."""
