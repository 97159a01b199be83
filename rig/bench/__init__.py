"""Guest-free parts of the benchmark reports: Fig. 4 (instruction sizes), Fig. 5 (cost model),
provenance and the report writer."""
