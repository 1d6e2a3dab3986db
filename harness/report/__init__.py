"""Reports: one comparison's report.md, results.csv and plot (comparison), the summary.json contract (contract), the
table over several runs or seeds (aggregate), Weights & Biases logging (tracking), and `dem-bench-report` (cli)."""
