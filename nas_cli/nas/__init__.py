"""Neural architecture search."""
