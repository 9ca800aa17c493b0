"""Turn run folders into tables and plots, reading only the run record (summary.json, metrics.csv, .hydra/)."""
