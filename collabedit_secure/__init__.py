"""collabedit-secure: privacy-preserving collaborative knowledge editing (CollabEdit over MEMIT).

Sub-packages follow the runtime roles (see DESIGN.md section 6):
editing (MEMIT), merging (CollabEdit and baselines), world (the embedded default), eval (metrics),
bench (benchmarks), kernels (compiled hot paths); secure (masking, CKKS) and rpc (services) are
still empty.
"""

__version__ = "0.1.0"
