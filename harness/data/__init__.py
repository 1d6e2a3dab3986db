"""Data: where each distribution's rows come from and how they become token blocks — the built-in generators
(builtin), real files and hub datasets (sources, checked row by row by filecheck), the offline hub mirror (mirror),
tokenisation and packing (tokens). Imports only harness.config and harness.errors from the rest of the harness."""
