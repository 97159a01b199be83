"""The benchmark behind ``invoke bench``: its parts (Table 1, splice latency, Fig. 4, the hop
census, Fig. 5) are one module each, registered in :mod:`rig.bench.registry` and composed by
:mod:`rig.bench.run` into one report (provenance, tables, figures)."""
