"""Benchmarks anyone can run: ``scdpo dev bench-trainers`` (:mod:`.footprint`) compares the
footprint of ``scdpo lora train`` with the two-UNet designs of the peer trainers on a mid-size
SD-shaped model built here (:mod:`.sd_shaped`)."""
