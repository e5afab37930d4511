"""Multiruns: the Hydra callback that records each job's status, and ``dnl-collect``, which tabulates a sweep."""
