"""Plots and logger helpers derived from audits.jsonl."""
