"""Benchmark: the SC-DPO trainer step with the reference = the UNet with its LoRA disabled, vs the
same loss with a separate frozen reference UNet copy (Diffusion-DPO / SafetyDPO reference code).

Run:  python tests/benchmarks/bench_reference.py [--batch-size 2] [--repeats 3] [--sweep] [--json]
(the same as `scdpo bench`). Prints step time and peak memory side by side, the ratios ours / copy
(targets: memory <= 0.7x, time <= 1.0x) and how they were measured. See scdpo.dpo.bench.
"""

import sys

from scdpo.dpo.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["--sweep"]))
