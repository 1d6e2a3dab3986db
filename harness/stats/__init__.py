"""Statistics: intervals and paired tests over items and seeds (intervals), one run's per-model statistics from its
per-sample records (significance), and retention of each fine-tune's and the base's skills (retention)."""
