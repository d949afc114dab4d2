"""asv benchmarks of gncpu; see asv_bench/asv.conf.json."""
