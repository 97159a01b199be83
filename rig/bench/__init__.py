"""The benchmark behind ``invoke bench``: Table 1 measured in booted guests, Fig. 4 and the hop
census from the built kernel, the Fig. 5 cost model, and the report (provenance, tables, figures)."""
